"""The errors a stage raises about its inputs, shared by every stage and its command."""
from __future__ import annotations


class StageInputError(ValueError):
    """What an earlier stage wrote is missing, or does not fit the request (a run without
    stage 1 or 2 output, an unknown instance id, a dictionary fitted to another run); the
    message names the path and what to run. The stage commands print it without a traceback."""


class ShardError(ValueError):
    """A shard or manifest on disk does not match what it should hold."""
