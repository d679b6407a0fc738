"""Stage 1: activation shards with ground truth, from toy models of superposition or from a
synthetic world (worlds.py with firing.py; distributions.py for the toy models' features)."""
from __future__ import annotations

from unsuperpose.lazy_exports import lazy_exports

_EXPORTS = {"GenerateConfig": "config", "run_generate": "pipeline"}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
