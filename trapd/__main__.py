import sys

from trapd.cli import main

sys.exit(main())
