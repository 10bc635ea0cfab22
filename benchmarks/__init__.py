"""Benchmark scripts (run from the repository root). A regular package so that `python -m benchmarks.utility`
finds this folder before the `benchmarks` package that opacus installs into site-packages."""
