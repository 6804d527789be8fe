"""Numerical cores that ship with daskbatch, for demos, tests and benchmarks."""
