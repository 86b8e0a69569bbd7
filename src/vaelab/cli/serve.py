"""`vaelab serve`: (being written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` command to the parser (to be written)."""
