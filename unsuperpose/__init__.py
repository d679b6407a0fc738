"""unsuperpose: make superposition on purpose, then measure how well dictionary learning undoes it.

The stages are subpackages: `unsuperpose.generate` (toy models and synthetic worlds ->
activation shards with ground truth), `unsuperpose.sae` (dictionary methods),
`unsuperpose.evaluate` (scores against the truth); `unsuperpose.data` and
`unsuperpose.models` are the libraries they share. In a checkout they are the top-level
folders of the same names (setup.cfg's package_dir maps them here).
"""

__version__ = "0.1.0"

# OpenMP threads sleep rather than spin between torch's ops (read once, when torch loads
# OpenMP, so here: before any stage imports torch); data/threads.py has the thread rule
from unsuperpose.data.threads import quiet_openmp  # noqa: E402

quiet_openmp()
