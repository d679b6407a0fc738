"""Stage 3: score each fitted dictionary against the true features; tables, report, figures."""
from evaluate.config import EvaluateConfig
from evaluate.pipeline import evaluate_run, run_evaluate

__all__ = ["EvaluateConfig", "evaluate_run", "run_evaluate"]
