"""asv's ``setup_cache``: run once per cache key, in a process of its own with its own timeout, its
result pickled to a directory that every benchmark using it then works in.

asv runs ``setup_cache`` in a fresh process whose working directory is a new cache directory,
pickles what it returns to ``cache.pickle`` there, and runs each benchmark that shares the key
(the module and line of the ``setup_cache``) in that directory, passing the unpickled value as
the first argument of setup, the benchmark and teardown. perfwatch does the same: the first
worker of a run that needs a key makes its cache (the others wait on a lock and reuse it), and
a ``setup_cache`` that raises or overruns is recorded there, so every benchmark that needs it
fails with that one line and it is not run again. The cache lives in the run's temporary
directory, removed with it; outside a run (paired rounds) each worker makes its own.
"""

from __future__ import annotations

import atexit
import fcntl
import inspect
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from hashlib import sha256
from pathlib import Path

from perfwatch.bench import identity
from perfwatch.bench.package import SuiteLoadError, module_file, one_line_error, shown, suite_files
from perfwatch.bench.suite import Benchmark, load_target
from perfwatch.proctree import kill_tree

RUN_DIR_ENV = "PERFWATCH_RUN_DIR"  # the runner sets it on every worker of a run and finds its leftovers by it
CACHE_FILE, FAILED_FILE, SPEC_FILE, LOCK_FILE = "cache.pickle", "failed.json", "spec.json", ".lock"


class SetupCacheFailed(Exception):
    """The benchmark's setup_cache raised or overran; the message is one line."""


def private_base() -> Path:
    """A directory for caches outside a run, this process's own, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="perfwatch-setup-cache-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def cache_dir(bench: Benchmark) -> Path:
    """Where the cache of ``bench``'s key lives in this run."""
    base = Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else private_base()
    key = sha256(f"{bench.root}\0{bench.setup_cache_key}".encode()).hexdigest()[:16]
    return base / "setup_cache" / key


def ensure(bench: Benchmark, timeout: float, env: dict[str, str]) -> Path:
    """The cache directory of ``bench``'s setup_cache, made by a ``setup-cache`` worker (environment
    ``env`` added) unless this run already made it; raises SetupCacheFailed with the one-line reason."""
    directory = cache_dir(bench)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / CACHE_FILE).exists() and not (directory / FAILED_FILE).exists():
            make_in_child(bench, directory, timeout, env)
    if (directory / CACHE_FILE).exists():
        return directory
    raise SetupCacheFailed(json.loads((directory / FAILED_FILE).read_text())["error"])


def make_in_child(bench: Benchmark, directory: Path, timeout: float, env: dict[str, str]) -> None:
    """Run ``python -m perfwatch.worker setup-cache`` for ``bench`` in ``directory``, killed (its whole tree)
    after ``timeout`` seconds; a failure it did not record itself is recorded here."""
    (directory / SPEC_FILE).write_text(json.dumps(bench.to_dict()))
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "perfwatch.worker", "setup-cache", str(directory / SPEC_FILE),
                                 str(directory)], cwd=directory, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:  # also on KeyboardInterrupt
            kill_tree(proc.pid)
            proc.wait()
        stderr.seek(0)
        lines = [ln for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    if (directory / CACHE_FILE).exists() or (directory / FAILED_FILE).exists():
        return
    if returncode in (None, -signal.SIGALRM):
        error = f"timed out after {timeout:g} s; set a larger `timeout` on setup_cache if it needs more"
    else:
        error = f"its process exited with {returncode}: {lines[-1].strip() if lines else 'no output'}"
    record_failure(directory, f"{location(bench)}: {error}")


def location(bench: Benchmark) -> str:
    """``file:line`` of the benchmark's setup_cache, from its key (module inside the suite, or a file, and line)."""
    module, _, line = (bench.setup_cache_key or "").rpartition(":")
    if bench.root and module and not module.endswith(".py"):
        return f"{shown(module_file(Path(bench.root), module))}:{line}"
    return f"{shown(module or bench.file)}:{line}"


def record_failure(directory: Path, error: str, trace: str = "") -> None:
    (directory / FAILED_FILE).write_text(json.dumps({"error": error, "traceback": trace}))


def parameter_free(setup: object) -> bool:
    """A module-level setup callable with no arguments: asv runs those before setup_cache too."""
    if inspect.ismethod(setup) or not callable(setup):
        return False
    try:
        inspect.signature(setup).bind()
    except (TypeError, ValueError):
        return False
    return True


def make(bench: Benchmark, directory: Path) -> None:
    """The ``setup-cache`` worker's job: in ``directory``, run the parameter-free setups and setup_cache,
    and pickle its result there (or record why it failed)."""
    os.chdir(directory)
    try:
        target = load_target(bench)
        for setup in identity.setups(target.sources):
            if parameter_free(setup):
                setup()
        value = identity.first_attr(target.sources, "setup_cache")()
        partial = directory / (CACHE_FILE + ".partial")
        with open(partial, "wb") as out:
            pickle.dump(value, out)
        partial.rename(directory / CACHE_FILE)
    except SuiteLoadError as exc:
        record_failure(directory, str(exc))
    except BaseException as exc:  # noqa: BLE001  (a failure it records is one line for every user of the cache)
        files = suite_files(Path(bench.root)) if bench.root else set()
        record_failure(directory, one_line_error(exc, files | {Path(bench.file)}), "".join(traceback.format_exception(exc)))


def load(directory: Path) -> object:
    """The value setup_cache returned, as this run pickled it."""
    with open(directory / CACHE_FILE, "rb") as cached:
        return pickle.load(cached)

