"""`ray submit cluster.yaml ray_jobs/ensemble.py -- ARGS`: fuse the top checkpoints of each family of a tuned experiment (`detfuse ensemble`), as a script.

The same as `detfuse ensemble ARGS`; the logic lives in detfuse/stages/ensemble.py.
"""

import sys

from detfuse.stages.cli import main as cli_main


def main(argv=None):
    return cli_main(["ensemble", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
