"""`python -m vaelab ...` (also what `torchrun -m vaelab` runs)."""

import sys

from .cli import main

sys.exit(main())
