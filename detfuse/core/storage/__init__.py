"""Storage: store.py is the one interface to a local directory or an S3 prefix (read, atomic write, exists, list,
put with sha256), experiment_storage.py addresses it by URI, and s3.py holds the S3 client, its settings and the
once-per-node fetch into the cache."""
