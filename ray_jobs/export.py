"""`ray submit cluster.yaml ray_jobs/export.py -- ARGS`: a checksummed bundle of the best checkpoints and the ensemble (`detfuse export`), as a script.

The same as `detfuse export ARGS`; the logic lives in detfuse/stages/export.py.
"""

import sys

from detfuse.stages.cli import main as cli_main


def main(argv=None):
    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
