"""``python -m perfwatch`` runs the command line."""

import sys

from perfwatch.cli import main

sys.exit(main())
