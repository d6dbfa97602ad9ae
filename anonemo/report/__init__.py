"""The report (``python -m anonemo.report``): :mod:`~anonemo.report.collect` (runs grouped by
configuration), :mod:`~anonemo.report.measures` (the paper's numbers, the columns, anonymity),
:mod:`~anonemo.report.render` (tables and figures)."""
