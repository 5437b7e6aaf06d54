"""Load tests and benchmarks for headrace (not part of the installed package)."""
