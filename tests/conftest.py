"""Shared fixtures (helpers that tests import live in helpers.py: no test module imports another)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Synthetic datasets go to a per-session temp dir, never to the user's ~/.cache."""
    monkeypatch.setenv("PERFWATCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "perfwatch-cache"))
