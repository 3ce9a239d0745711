"""`python -m bench`: see bench/__init__.py for the method."""

import sys

from bench.cli import main

sys.exit(main())
