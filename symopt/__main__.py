"""``python -m symopt`` runs the command line (see :mod:`symopt.cli`)."""
import sys

from .cli import main

sys.exit(main())
