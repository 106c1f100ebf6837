"""What the tests share: running the real `perfwatch` command, writing suites, a small process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_perfwatch(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed command line exactly as a user would, in ``cwd``."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "perfwatch", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def write_suite(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


# A process with two plain multiprocessing children that exits when its stdin closes:
# the smallest real process tree for the collector and exporter to watch.
TREE_CHILD = textwrap.dedent(
    """
    import multiprocessing, sys, time
    if __name__ == "__main__":
        children = [multiprocessing.Process(target=time.sleep, args=(60,), daemon=True) for _ in range(2)]
        for child in children:
            child.start()
        print("ready", flush=True)
        sys.stdin.read()
    """
)
