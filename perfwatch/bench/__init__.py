"""Benchmark runs: suite discovery, the runner and its worker processes, paired runs against a git ref."""
