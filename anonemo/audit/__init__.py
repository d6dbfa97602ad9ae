"""The identity audit: :mod:`~anonemo.audit.suite` (what is attacked and how it is scored),
:mod:`~anonemo.audit.attackers` (the attackers), :mod:`~anonemo.audit.saved_run` (re-auditing a
finished run; ``python -m anonemo.audit``).

Nothing is imported here, so that the re-audit command checks its options before paying for the
~10 s of torch, Lightning and MLflow imports.
"""
