"""Benchmarks: each prints figures as ratios against a raw baseline from the same run."""
