"""Regression detection: verdicts, baselines, change points over history, CI reports and alerts."""
