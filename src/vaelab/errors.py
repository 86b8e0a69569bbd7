"""Errors a user can fix.

Every exception here stands for a user's mistake or a problem with their data
(missing file, bad config value, corrupt checkpoint). The CLI prints its
message as one line and exits with code 2; no traceback. Messages name the
problem *and* the fix. Anything else that escapes is a bug in vaelab.
"""

from __future__ import annotations


class VaelabError(Exception):
    """Base class of the errors a user can fix (exit code 2 in the CLI)."""

    exit_code = 2


class ConfigError(VaelabError):
    """A config file, override or argument is wrong."""


class DataError(VaelabError):
    """A dataset is missing, truncated, malformed or inconsistent."""


class DatasetNotFoundError(DataError):
    """No copy of a dataset could be found, and none could be downloaded."""


class DownloadError(DataError):
    """A download failed or delivered the wrong bytes."""


class CheckpointError(VaelabError):
    """A checkpoint or run directory is missing, corrupt or does not match."""
