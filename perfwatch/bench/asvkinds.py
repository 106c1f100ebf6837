"""The two asv kinds that measure something other than a call in this process: timeraw_ and mem_.

``timeraw_`` returns code (or ``(code, setup)``) that asv times in a fresh interpreter with
``timeit``: import costs and start-up, which a warm process cannot show. ``mem_`` returns an
object whose size asv reports as pympler's ``asizeof`` sees it: the deep size of a copy of it,
less what it shares with the original (asv_runner ``benchmarks/mem.py``).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

# What asv_runner's timeraw runs in the fresh interpreter (the code reaches it on stdin).
RAW_PROGRAM = textwrap.dedent('''
    from timeit import timeit, default_timer as timer
    print(repr(timeit(stmt="""{stmt}""", setup="""{setup}""", number={number}, timer=timer)))
''').strip()
RAW_RUNNER = "import sys\nexec(sys.stdin.read())\n"


def raw_program(code: Any, number: int) -> str:
    """The timing program for what a timeraw benchmark returned: its code, or (code, setup)."""
    stmt, setup = code if isinstance(code, tuple) else (code, "")
    if not isinstance(stmt, str) or not isinstance(setup, str):
        raise TypeError(f"a timeraw benchmark must return code as a string or (code, setup), not {code!r}")
    stmt, setup = (textwrap.dedent(part).replace('"""', '\\"\\"\\"') for part in (stmt, setup))
    return RAW_PROGRAM.format(stmt=stmt, setup=setup, number=number)


def raw_timer(code_of: Callable[[], Any], env: dict[str, str] | None) -> Callable[[int], float]:
    """Seconds per call of ``number`` runs of the code ``code_of()`` returns, timed in a fresh interpreter
    (``env`` added to its environment), as asv's timeraw does."""

    def per_call(number: int) -> float:
        proc = subprocess.run([sys.executable, "-c", RAW_RUNNER], input=raw_program(code_of(), number),
                              capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
        if proc.stderr:
            sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit {proc.returncode}")
            raise RuntimeError(f"the timeraw code failed in its fresh interpreter: {last.strip()}")
        return float(proc.stdout.strip()) / number

    return per_call


def object_size(obj: Any) -> int:
    """asv's mem_ measure: the bytes a copy of ``obj`` adds beside the original, by pympler's asizeof."""
    from pympler.asizeof import asizeof  # only mem_ benchmarks need it (suite.kind_unsupported checks)

    return asizeof([obj, copy.copy(obj)]) - asizeof([obj, obj])
