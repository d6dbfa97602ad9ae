"""anonemo: emotion recognition whose learned representation hides the user's identity.

Reproduces and extends Narula, Wang & Chaspari, "An adversarial learning framework for preserving
users' anonymity in face-based emotion recognition", ICASSP 2020.
"""

import logging
import os
import warnings

# albumentations checks the network for a newer release on import; runs must work offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# OpenMP threads that spin while they wait take a shared core's time from the thread they wait
# for: beside one busy process, 2-thread jobs ran 3-4x slower, slower than with 1 thread (docs/performance.md,
# "Shared machines"). Read when torch loads, so only where anonemo is imported before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# MLflow draws a progress bar per artifact fetched (re-audit and export fetch a few small files).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Third-party messages a user cannot act on: Lightning's notes on every Trainer (devices, precision,
# checkpoint restores, an advertisement; the job logs its device and precision once), a deprecation
# inside Lightning itself, and MLflow's database set-up.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

from anonemo.config import register_resolvers  # noqa: E402  (after the environment above)

register_resolvers()

__version__ = "0.1.0"
