"""`python -m vaelab ...` (also what `torchrun -m vaelab` runs)."""

import sys

from vaelab.cli import main

sys.exit(main())
