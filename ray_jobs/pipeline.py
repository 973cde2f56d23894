"""`ray submit cluster.yaml ray_jobs/pipeline.py -- ARGS`: tune -> ensemble -> export -> report in one job (`detfuse pipeline`), as a script.

The same as `detfuse pipeline ARGS`; the logic lives in detfuse/stages/pipeline.py.
"""

import sys

from detfuse.stages.cli import main as cli_main


def main(argv=None):
    return cli_main(["pipeline", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
