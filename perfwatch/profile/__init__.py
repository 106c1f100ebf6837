"""Bottleneck profiling of an unmodified training command: sampling, attribution, diagnosis, the report."""
