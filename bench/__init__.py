"""Benchmarks of the DAPL pipeline against the released code's structure (see docs/PERFORMANCE.md)."""
