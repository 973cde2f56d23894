"""Entry points that run on the Ray head node: tune, ensemble, export and the pipeline chaining them.

Each is a script for `ray submit cluster.yaml ray_jobs/<job>.py -- ARGS` and the body of the matching
`detfuse <job>` subcommand (the same code).
"""
