"""`python -m segprune.cli`: the `segprune` command (what torchrun starts, one process per rank)."""

import sys

from segprune.cli import main

sys.exit(main())
