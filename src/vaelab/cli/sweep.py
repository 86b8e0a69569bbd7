"""`vaelab sweep`: (being written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sweep` command to the parser (to be written)."""
