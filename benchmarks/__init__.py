"""The benchmark (``make bench``, ``python -m benchmarks``); not part of the installed package."""
