"""Stage 3: score each fitted dictionary against the true features; tables, report, figures."""
from unsuperpose.evaluate.config import EvaluateConfig
from unsuperpose.evaluate.pipeline import evaluate_run, run_evaluate

__all__ = ["EvaluateConfig", "evaluate_run", "run_evaluate"]
