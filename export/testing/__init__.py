"""Test models for tests and benchmarks (never used by the commands): tiny checkpoints, outlier injection."""
