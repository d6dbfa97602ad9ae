"""The identity audit: :mod:`~anonemo.audit.suite` (what is attacked and how it is scored),
:mod:`~anonemo.audit.attackers` (the attackers), :mod:`~anonemo.audit.saved_run` (re-auditing a
finished run; ``python -m anonemo.audit``) and :mod:`~anonemo.audit.frozen_base` (what every trained
base goes through: fresh heads, the emotion head saved with it, the audit).

Nothing is imported here, so that the re-audit command checks its options before paying for the
~10 s of torch, Lightning and MLflow imports.
"""
