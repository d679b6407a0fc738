"""Stage 1: toy models of superposition -> activation shards with ground truth."""
from unsuperpose.generate.config import GenerateConfig
from unsuperpose.generate.pipeline import run_generate

__all__ = ["GenerateConfig", "run_generate"]
