"""anonemo: emotion recognition whose learned representation hides the user's identity.

Reproduces and extends Narula, Wang & Chaspari, "An adversarial learning framework for preserving
users' anonymity in face-based emotion recognition", ICASSP 2020.
"""

import os

# albumentations checks the network for a newer release on import; runs must work offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
