"""`ray submit cluster.yaml ray_jobs/tune.py -- ARGS`: ASHA search over both detector families (`detfuse tune`), as a script.

The same as `detfuse tune ARGS`; the logic lives in detfuse/stages/tune.py.
"""

import sys

from detfuse.stages.cli import main as cli_main


def main(argv=None):
    return cli_main(["tune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
