"""Stage 1: activation shards with ground truth, from toy models of superposition or from a
synthetic world (worlds.py with firing.py; distributions.py for the toy models' features)."""
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.pipeline import run_generate

__all__ = ["GenerateConfig", "run_generate"]
