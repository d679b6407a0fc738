"""Stage 3 (scoring against the true features). So far: the recovery metrics in metrics.py."""
