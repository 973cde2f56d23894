import sys

from detfuse.cli import main

sys.exit(main())
