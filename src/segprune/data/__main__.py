"""`python -m segprune.data`: the same as `segprune data` (see `segprune.cli.data`)."""

import sys

from segprune.cli import main

sys.exit(main(["data", *sys.argv[1:]]))
