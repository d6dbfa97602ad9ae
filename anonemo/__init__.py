"""anonemo: emotion recognition whose learned representation hides the user's identity.

Reproduces and extends Narula, Wang & Chaspari, "An adversarial learning framework for preserving
users' anonymity in face-based emotion recognition", ICASSP 2020.
"""

import logging
import os
import warnings

# albumentations checks the network for a newer release on import; runs must work offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# OpenMP threads spin about 10 us at a barrier, then sleep: as fast as spinning on a quiet machine,
# and no collapse beside a busy process, where spinning threads take the core of the thread they
# wait for (docs/performance.md, "Shared machines"). A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
# Read when torch loads, so only where anonemo is imported before torch.
if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "1000"
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
