"""MLflow tracking: :mod:`~anonemo.tracking.store` (where runs are stored),
:mod:`~anonemo.tracking.run` (one job's run), :mod:`~anonemo.tracking.identity` (which settings
make a job, and its finished or unfinished runs), :mod:`~anonemo.tracking.artifacts` (what a run
keeps for later commands) and :mod:`~anonemo.tracking.sweep` (a sweep's parent run)."""
