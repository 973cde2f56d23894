"""Remote storage. s3.py talks to S3 and S3-compatible servers through boto3's own configuration."""
