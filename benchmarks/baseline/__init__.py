"""Frozen copies of earlier code, the "before" arms of benchmarks that compare against it."""
