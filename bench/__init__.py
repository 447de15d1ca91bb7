"""Benchmarks of rlhfkit against its peers (`make bench`); results go to BENCHMARKS.md."""
