"""The pipeline's stages and the marker each writes when it completes: <experiment>/pipeline/<stage>.json,
{stage, started, finished}. The pipeline skips a marked stage on a rerun; the report shows their wall time.
A stage stopped on purpose before it finished (Ctrl-C, SIGUSR1) writes no marker and exits STOPPED."""

from detfuse.core.storage import experiment_storage

STAGES = ("tune", "ensemble", "export", "report")
STOPPED = 130  # the exit code of a stage stopped before it finished, as a shell's for SIGINT


def marker_uri(experiment_uri, stage):
    return experiment_storage.join(experiment_uri, "pipeline", f"{stage}.json")


def stage_seconds(experiment_uri, stages):
    """{stage: wall seconds} of those of `stages` that completed."""
    seconds = {}
    for stage in stages:
        uri = marker_uri(experiment_uri, stage)
        if experiment_storage.exists(uri):
            record = experiment_storage.read_json(uri)
            seconds[stage] = record["finished"] - record["started"]
    return seconds
