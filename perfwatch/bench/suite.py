"""asv benchmark suites: suite sizes, the benchmark spec, and discovery as asv does it.

Suite modules are plain asv benchmark files. They pick their parameter grids for
the suite size being run with :func:`by_size`, which reads ``PERFWATCH_SUITE``
(set by ``perfwatch run --suite``; unset under asv, which then gets ``quick``).

Discovery imports the benchmark directory as a package (package.py) and finds, names and
versions benchmarks by asv's rules (identity.py), so a suite written for asv runs unchanged
and its names are asv's. Each benchmark becomes a spec (``Benchmark``) that a fresh worker
process resolves again (``load_target``) to measure it.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from perfwatch.bench import asvconf, identity
from perfwatch.bench.package import (
    Found,
    SuiteLoadError,
    import_module,
    one_line_error,
    selection,
    shown,
    suite_files,
    walk,
)
from perfwatch.config import SIZES

SIZE_ENV = "PERFWATCH_SUITE"

T = TypeVar("T")


def current_size() -> str:
    """The suite size being run: ``$PERFWATCH_SUITE``, or ``quick``."""
    size = os.environ.get(SIZE_ENV, "quick") or "quick"
    if size not in SIZES:
        raise ValueError(f"{SIZE_ENV}={size!r} is not a suite size; use one of {', '.join(SIZES)}")
    return size


def by_size(quick: T, ci: T | None = None, full: T | None = None) -> T:
    """Pick a value for the current suite size; ``ci`` defaults to ``quick``, ``full`` to ``ci``."""
    size = current_size()
    if size == "quick":
        return quick
    ci_value = quick if ci is None else ci
    if size == "ci":
        return ci_value
    return ci_value if full is None else full


# --- the benchmark spec -------------------------------------------------------------

@dataclass(frozen=True)
class Benchmark:
    """One benchmark and one combination of its parameters, as found in a suite."""

    name: str  # asv's name, then the parameters: "module.Class.method(param=label, ...)"
    file: str  # the module that holds it (absolute)
    module: str  # that module, dotted, inside the benchmark dir ("" for its __init__)
    qualname: str  # how to reach it in the module: "Class.attr" or "attr"
    param_index: int
    params: dict[str, Any]
    kind: str  # time, timeraw, mem, peakmem, track; "import" for a module that failed to import
    unit: str
    higher_is_better: bool
    sizes: tuple[str, ...]
    timeout: float | None
    number: int | None
    repeat: Any
    warmup_time: float | None
    sample_time: float | None
    unsupported: str | None = None  # why it is skipped before it runs (skip_params, a missing library)
    rounds: int | None = None  # paired mode's rounds of fresh processes (asv's name); None: the suite's
    # Fields added after paired mode existed (LATER_FIELDS):
    root: str | None = None  # the benchmark dir, imported as a package
    attr: str | None = None  # the benchmark's attribute on its class or module
    asv_name: str | None = None  # the name asv gives it, without parameters
    pretty_name: str | None = None
    version: str | None = None  # asv's version: the benchmark's own ``version``, else code_hash
    code_hash: str | None = None  # SHA-256 of the source asv hashes (with setup and setup_cache)
    setup_cache_key: str | None = None
    setup_cache_timeout: float | None = None
    min_run_count: int | None = None
    import_error: str | None = None  # kind "import": the one line saying why its module did not import
    # A time_ benchmark with setup hooks times each call on fresh state, teardown and setup before every call
    # and number 1 unless set, as asv_runner >= 0.3 does (asv#966): in an asv project (asv.conf.json) unless
    # the benchmark sets perfwatch's ``fresh_setup = False``, elsewhere only where it sets ``True``; None: not.
    fresh_setup: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON for a worker. A field added after paired mode existed is left out while unset:
        paired mode also talks to the worker of an older checkout, which would refuse it."""
        data = asdict(self)
        return {k: v for k, v in data.items() if not (k in LATER_FIELDS and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Benchmark:
        return cls(**{**data, "sizes": tuple(data["sizes"])})


LATER_FIELDS = ("rounds", "root", "attr", "asv_name", "pretty_name", "version", "code_hash", "setup_cache_key",
                "setup_cache_timeout", "min_run_count", "import_error", "fresh_setup")


# --- attributes, checked at discovery: a bad one must not surface after the suite has run ---

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _repeat(value: Any) -> bool:
    """asv's repeat: a number of samples (0: the default), or (min_repeat, max_repeat, max_time)."""
    if isinstance(value, (list, tuple)):
        return (len(value) == 3 and _whole(value[0]) and _whole(value[1]) and _number(value[2])
                and 1 <= value[0] <= value[1] and value[2] >= 0)
    return _whole(value) and value >= 0


def _params(value: Any) -> bool:
    """asv's params, as asv_runner reads them: a sequence whose first entry decides. A list or tuple first
    makes it one collection of values per parameter (a range is one too; their cartesian product), anything
    else makes the whole sequence the values of one parameter (numpy's ``[2, [1, 3]]``: two values)."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        return False
    entries = list(value)
    if not entries or not isinstance(entries[0], (list, tuple)):
        return True
    return all(isinstance(e, Iterable) and not isinstance(e, (str, bytes, dict)) for e in entries)


def size_choice(value: Any) -> bool | None:
    """Whether ``sizes`` is perfwatch's choice of suite sizes: True, or False for a mistaken one (a lone
    name, an unknown name beside known ones); None when it names no suite size at all: then it is the
    suite's own data of that name (scipy's benchmarks keep problem sizes there), not perfwatch's."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if names is None or not any(isinstance(n, str) and n in SIZES for n in names):
        return None
    return isinstance(value, (list, tuple)) and all(n in SIZES for n in names)


def _env(value: Any) -> bool:
    try:
        identity.timeraw_env(value)
    except TypeError:
        return False
    return True


ATTRIBUTES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "params": (_params, "a list of values, or a list of lists of values"),
    "param_names": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v), "a list of names"),
    "timeout": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "number": (lambda v: _whole(v) and v >= 0, "a whole number of calls per sample (0: calibrated)"),
    "repeat": (_repeat, ("a whole number of samples (0: the default) or (min_repeat, max_repeat, max_time) "
                         "with 1 <= min_repeat <= max_repeat and max_time >= 0 seconds")),
    "warmup_time": (_number, "a number of seconds (negative: the default)"),
    "sample_time": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "rounds": (lambda v: _whole(v) and v >= 1, "a whole number of rounds of fresh processes >= 1"),
    "processes": (lambda v: _whole(v) and v >= 1, "a whole number of rounds >= 1 (asv's old name for rounds)"),
    "min_run_count": (lambda v: _whole(v) and v >= 0, "a whole number of timed calls"),
    "unit": (lambda v: isinstance(v, str) and bool(v.strip()), "a unit name such as 'seconds' or 'samples/s'"),
    "pretty_name": (lambda v: isinstance(v, str), "a string"),
    "skip_params": (lambda v: isinstance(v, (list, tuple)), "a list of tuples of parameter values"),
    "timer": (callable, "a clock: a function that returns seconds, such as time.process_time"),
    "env": (_env, "a dict of environment variables (no None values)"),
    "sizes": (lambda v: size_choice(v) is not False, f"a list of suite sizes out of {', '.join(SIZES)}"),
    "fresh_setup": (lambda v: isinstance(v, bool), "True or False"),
}


def check_attributes(file: Path, name: str, sources: list[Any]) -> None:
    """Raise SuiteLoadError naming the file, the benchmark and the attribute for the first bad attribute."""
    for attr, (valid, expected) in ATTRIBUTES.items():
        value = identity.first_attr(sources, attr)
        if value is not None and not valid(value):
            raise SuiteLoadError(f"{shown(file)}: benchmark {name}: {attr} = {value!r} is not valid; "
                                 f"it must be {expected}")


def _jsonable(value: Any, label: str) -> Any:
    """A parameter value as strict JSON holds it: plain values as they are, others (NaN too) by their label."""
    if isinstance(value, float) and not math.isfinite(value):
        return label
    return value if isinstance(value, (str, int, float, bool, type(None))) else label


# --- discovery ------------------------------------------------------------------------

def suite_root(path: Path) -> Path:
    """The benchmark dir ``path`` belongs to: the asv benchmark_dir that holds it, else the directory
    itself, or a file's own directory."""
    return asvconf.enclosing_suite(path) or (path if path.is_dir() else path.parent)


def discover(paths: list[Path]) -> list[Benchmark]:
    """Every benchmark under ``paths`` (suite directories or files), named as asv names them.

    A module that fails to import is listed as one benchmark of kind ``import`` that carries its error;
    a bad attribute raises SuiteLoadError (nothing may run then).
    """
    benchmarks: list[Benchmark] = []
    seen: set[tuple[Path, str]] = set()
    for given in paths:
        path = given.resolve()
        if not path.exists():
            raise SuiteLoadError(f"{given}: no such file or directory")
        root, asv_project = suite_root(path), asvconf.enclosing_suite(path) is not None
        start, single = selection(root, path)
        for found in walk(root, start, single):
            if (root, found.name) not in seen:
                seen.add((root, found.name))
                benchmarks += [replace(b, fresh_setup=(asv_project if b.fresh_setup is None else b.fresh_setup) or None)
                               for b in benchmarks_of(found, root)]
    return shared_cache_timeouts(benchmarks)


def shared_cache_timeouts(benchmarks: list[Benchmark]) -> list[Benchmark]:
    """asv's limit for a setup_cache: its own ``timeout``, else the longest ``timeout`` of the benchmarks that
    share it, whichever of them makes the cache. Where one of them sets none, each keeps its own limit
    (its timeout, else the suite size's default, worker.setup_cache_timeout)."""
    timeouts: dict[tuple[str | None, str | None], list[float | None]] = {}
    for b in benchmarks:
        if b.setup_cache_key and b.setup_cache_timeout is None:
            timeouts.setdefault((b.root, b.setup_cache_key), []).append(b.timeout)
    longest = {key: max(t for t in values if t is not None) for key, values in timeouts.items() if None not in values}
    return [replace(b, setup_cache_timeout=longest[key]) if (key := (b.root, b.setup_cache_key)) in longest else b
            for b in benchmarks]


def broken(found: Found, root: Path, error: str) -> Benchmark:
    """The stand-in for a module that could not be imported: it fails, with ``error``, wherever it runs."""
    return Benchmark(name=found.name or root.name, file=str(found.file), module=found.name, qualname="",
                     param_index=0, params={}, kind="import", unit="", higher_is_better=False, sizes=SIZES,
                     timeout=None, number=None, repeat=None, warmup_time=None, sample_time=None, root=str(root),
                     import_error=error)


def benchmarks_of(found: Found, root: Path) -> list[Benchmark]:
    """The benchmarks of one module of the suite (or its stand-in, if it failed)."""
    if found.module is None:
        return [broken(found, root, found.error or "did not import")]
    try:
        return [b for key, attr, func, klass in candidates(found.module)
                for b in expand(found, root, key, attr, func, klass)]
    except SuiteLoadError:
        raise
    except Exception as exc:  # noqa: BLE001  (a class that cannot be instantiated, a member that raises on access)
        return [broken(found, root, f"{shown(found.file)}: listing its benchmarks failed: "
                                    f"{one_line_error(exc, suite_files(root))}")]


def candidates(module: ModuleType) -> list[tuple[str, str, Any, type | None]]:
    """(key in the module, attribute, function, class or None) of every benchmark-like function that asv
    looks at: public module functions, and the functions and methods of public non-abstract classes,
    imported ones included (asv lists a class imported into two modules under both)."""
    found = []
    for key, obj in list(vars(module).items()):
        if key.startswith("_"):
            continue
        if inspect.isclass(obj) and not inspect.isabstract(obj):
            found += [(key, name, member, obj) for name, member in inspect.getmembers(obj)
                      if inspect.isfunction(member) or inspect.ismethod(member)]
        elif inspect.isfunction(obj):
            found.append((key, key, obj, None))
    return found


def expand(found: Found, root: Path, key: str, attr: str, func: Any, klass: type | None) -> list[Benchmark]:
    """One function's benchmarks, one per parameter combination; none if it is no benchmark or skipped."""
    if getattr(func, "skip_benchmark", False):
        return []
    custom = getattr(func, "benchmark_name", None)  # asv's own name for it, read off the function alone
    if custom is not None and not (isinstance(custom, str) and custom.strip()):
        raise SuiteLoadError(f"{shown(found.file)}: benchmark {attr}: benchmark_name = {custom!r} is not valid; "
                             "it must be a benchmark name")
    kind = identity.kind_of(custom.split(".")[-1] if custom else attr)
    if kind is None:
        return []
    assert found.module is not None
    prefix = found.name.split(".") if found.name else []
    if klass is None:
        name, sources, qualname = custom or ".".join([*prefix, func.__name__]), [func, found.module], key
    else:
        instance = klass()
        bound = getattr(instance, attr)
        name, sources, qualname = custom or ".".join([*prefix, klass.__name__, attr]), [bound, instance, found.module], f"{key}.{attr}"
    check_attributes(found.file, name, sources)
    try:
        spec = versioned(kind, sources)
    except (ValueError, TypeError, OSError) as exc:
        raise SuiteLoadError(f"{shown(found.file)}: benchmark {name}: {exc}") from None

    names, value_lists = identity.param_lists(sources)
    labels = identity.param_ids(value_lists)
    skip_tuples = identity.first_attr(sources, "skip_params", [])
    repeat = identity.first_attr(sources, "repeat")
    number = identity.first_attr(sources, "number", 1 if kind == "timeraw" else None)
    rounds = identity.first_attr(sources, "rounds", identity.first_attr(sources, "processes"))
    common = dict(
        file=str(found.file), module=found.name, qualname=qualname, kind=kind,
        unit=identity.first_attr(sources, "unit", identity.DEFAULT_UNITS[kind]),
        higher_is_better=bool(identity.first_attr(sources, "higher_is_better", False)),
        sizes=tuple(sizes) if size_choice(sizes := identity.first_attr(sources, "sizes")) else SIZES,
        timeout=identity.first_attr(sources, "timeout"), number=number or None,
        repeat=list(repeat) if isinstance(repeat, tuple) else repeat,
        warmup_time=identity.first_attr(sources, "warmup_time"), sample_time=identity.first_attr(sources, "sample_time"),
        rounds=rounds, root=str(root), attr=attr, asv_name=name, pretty_name=getattr(sources[0], "pretty_name", None),
        min_run_count=identity.first_attr(sources, "min_run_count"),
        fresh_setup=identity.first_attr(sources, "fresh_setup"), **spec,
    )
    missing = kind_unsupported(kind)
    found_benchmarks = []
    for index, picks in enumerate(itertools.product(*(range(len(v)) for v in value_lists))):
        values = tuple(value_lists[k][j] for k, j in enumerate(picks))
        chosen = [labels[k][j] for k, j in enumerate(picks)]
        for param, value, label in zip(names, values, chosen):
            if f"{id(value):x}" in label.lower():
                raise SuiteLoadError(f"{shown(found.file)}: benchmark {name}: parameter {param} = {label} holds the "
                                     "value's memory address, so its name would change every run; give "
                                     f"{type(value).__name__} a __repr__ without it")
        args = ", ".join(f"{n}={label}" for n, label in zip(names, chosen))
        found_benchmarks.append(Benchmark(
            name=f"{name}({args})" if names else name, param_index=index,
            params={n: _jsonable(v, label) for n, v, label in zip(names, values, chosen)},
            unsupported=missing or ("skipped by skip_params" if skipped_by(values, skip_tuples) else None),
            **common,
        ))
    return found_benchmarks


def versioned(kind: str, sources: list[Any]) -> dict[str, Any]:
    """asv's version and code hash, and the setup_cache key and timeout, of a benchmark."""
    setup_cache = identity.first_attr(sources, "setup_cache")
    code = identity.source_code([sources[0], *identity.setups(sources), setup_cache])
    if kind == "timeraw":
        code = identity.timeraw_code(code, identity.timeraw_env(identity.first_attr(sources, "env")))
    digest = identity.code_hash(code)
    version = identity.first_attr(sources, "version")
    cache_timeout = getattr(setup_cache, "timeout", None)
    if cache_timeout is not None and not (_number(cache_timeout) and cache_timeout > 0):
        raise ValueError(f"setup_cache.timeout = {cache_timeout!r} is not valid; it must be a number of seconds > 0")
    return {"version": digest if version is None else str(version), "code_hash": digest,
            "setup_cache_key": identity.setup_cache_key(setup_cache), "setup_cache_timeout": cache_timeout}


def skipped_by(values: tuple[Any, ...], skip_tuples: Any) -> bool:
    """asv's ``skip_params``: this combination of values is one of the tuples listed."""
    try:
        return tuple(values) in skip_tuples
    except (TypeError, ValueError):  # values that cannot be compared (arrays) are never skipped
        return False


def kind_unsupported(kind: str) -> str | None:
    """Why benchmarks of ``kind`` cannot run here, or None: mem_ sizes objects with pympler, as asv does."""
    if kind == "mem" and importlib.util.find_spec("pympler") is None:
        return "mem_ benchmarks measure object sizes with pympler, as asv does; pip install pympler"
    return None


# --- at run time ----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A benchmark resolved in a fresh process: the bound function, where its attributes come from
    (asv's sources: method, instance, module), and its parameter values."""

    func: Callable[..., Any]
    sources: list[Any]
    values: tuple[Any, ...]


def load_target(bench: Benchmark) -> Target:
    """Import the benchmark's module as part of its suite and find it; raises SuiteLoadError, or the
    suite's own exception (a class that fails to instantiate)."""
    if bench.root is None or bench.attr is None:
        raise SuiteLoadError(f"{bench.name}: the benchmark spec has no suite root; list the suite again")
    module = import_module(Path(bench.root), bench.module)
    if bench.qualname == bench.attr:
        func = getattr(module, bench.attr)
        sources = [func, module]
    else:
        instance = getattr(module, bench.qualname[: -len(bench.attr) - 1])()
        func = getattr(instance, bench.attr)
        sources = [func, instance, module]
    _, value_lists = identity.param_lists(sources)
    return Target(func, sources, identity.combination(value_lists, bench.param_index))
