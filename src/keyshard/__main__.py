"""`python -m keyshard` runs the command line."""

import sys

from keyshard.cli import main

sys.exit(main())
