"""Reference workloads for benchmarks: synthetic datasets, loaders, models, training, DDP.

Everything here is deterministic and self-contained (no downloads), so a change in a
benchmark number means a change in the code or the machine, never in the data.
"""
