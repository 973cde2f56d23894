import sys

from detfuse.stages.cli import main

sys.exit(main())
