"""Scripts for `ray submit cluster.yaml ray_jobs/<job>.py -- ARGS`: tune, ensemble, export and the pipeline.

Each is a thin entry point over the `detfuse <job>` subcommand; the jobs' logic lives in detfuse/stages/.
"""
