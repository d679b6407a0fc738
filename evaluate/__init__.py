"""Stage 3: score each fitted dictionary against the true features; tables, report, figures."""
from __future__ import annotations

from unsuperpose.lazy_exports import lazy_exports

_EXPORTS = {"EvaluateConfig": "config", "evaluate_run": "pipeline", "run_evaluate": "pipeline"}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
