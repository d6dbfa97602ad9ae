"""MLflow tracking: :mod:`~anonemo.tracking.store` (where runs are stored),
:mod:`~anonemo.tracking.run` (one job's run), :mod:`~anonemo.tracking.job_key` (which settings
make a job, and its finished or unfinished runs) and :mod:`~anonemo.tracking.artifacts` (what a run
keeps for later commands). A sweep's parent run is :mod:`anonemo.sweep`'s."""
