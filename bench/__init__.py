"""wagate's benchmarks: `make bench` (or `python -m bench`) runs them and writes the results."""
