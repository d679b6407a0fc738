"""Stage 1's shared base: file layout, shards, distributions; and the one version of the
project (`__version__`, read by setup.cfg and recorded by `data.environment.environment`)."""

__version__ = "0.1.0"
