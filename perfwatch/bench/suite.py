"""asv-style benchmark suites: suite sizes, and discovery of the benchmarks in suite files.

Suite modules are plain asv benchmark files. They pick their parameter grids for
the suite size being run with :func:`by_size`, which reads ``PERFWATCH_SUITE``
(set by ``perfwatch run --suite``; unset under asv, which then gets ``quick``).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
import os
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, TypeVar

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


# --- discovery -----------------------------------------------------------------

KINDS = {"time_": "time", "peakmem_": "peakmem", "track_": "track"}
UNSUPPORTED_PREFIXES = ("timeraw_", "mem_")  # asv kinds perfwatch does not measure
DEFAULT_UNITS = {"time": "seconds", "peakmem": "bytes", "track": "unitless"}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark and one combination of its parameters, as found in a suite file."""

    name: str  # "module.Class.method(param=value, ...)"
    file: str
    module: str
    qualname: str  # "Class.method" or "function"
    param_index: int
    params: dict[str, Any]
    kind: str
    unit: str
    higher_is_better: bool
    sizes: tuple[str, ...]
    timeout: float | None
    number: int | None
    repeat: Any
    warmup_time: float | None
    sample_time: float | None
    unsupported: str | None = None
    rounds: int | None = None  # paired mode's rounds of fresh processes (asv's name); None: the suite's

    def to_dict(self) -> dict[str, Any]:
        """As JSON for a worker. A field added after paired mode existed is left out while unset:
        paired mode also talks to the worker of an older checkout, which would refuse it."""
        data = asdict(self)
        return {k: v for k, v in data.items() if not (k in LATER_FIELDS and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Benchmark:
        return cls(**{**data, "sizes": tuple(data["sizes"])})


class SuiteLoadError(Exception):
    """A suite file could not be imported; the message names the file and line."""


def suite_files(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, module name) for every suite file under ``paths``; names are dotted relative paths."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_file():
            found.append((path, path.stem))
        elif path.is_dir():
            for file in sorted(path.rglob("*.py")):
                rel = file.relative_to(path).with_suffix("")
                if any(part.startswith(("_", ".")) for part in rel.parts):
                    continue
                found.append((file, ".".join(rel.parts)))
        else:
            raise SuiteLoadError(f"{path}: no such file or directory")
    return found


def import_suite(file: Path, module_name: str) -> ModuleType:
    """Import a suite file under a private name so it cannot shadow a real module."""
    unique = "perfwatch_suite_" + module_name.replace(".", "_")
    spec = importlib.util.spec_from_file_location(unique, file)
    if spec is None or spec.loader is None:
        raise SuiteLoadError(f"{file}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise SuiteLoadError(f"{file}:{exc.lineno}: syntax error: {exc.msg}; fix the suite file") from None
    except BaseException as exc:
        line = _last_line_in(exc, file)
        where = f"{file}:{line}" if line else str(file)
        raise SuiteLoadError(f"{where}: importing the suite failed: {type(exc).__name__}: {exc}") from None
    return module


def _last_line_in(exc: BaseException, file: Path) -> int | None:
    for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if Path(frame.f_code.co_filename) == file:
            return line
    return None


def lookup_attr(name: str, *owners: Any, default: Any = None) -> Any:
    for owner in owners:
        if owner is not None and hasattr(owner, name):
            return getattr(owner, name)
    return default


def param_grid(owner: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    """asv's params: a flat list is one parameter, a list of lists is a cartesian product."""
    params = lookup_attr("params", owner, default=[])
    if not params:
        return [], [()]
    if not isinstance(params[0], (list, tuple)):
        params = [params]
    names = list(lookup_attr("param_names", owner, default=[]) or [])
    names += [f"param{i + 1}" for i in range(len(names), len(params))]
    return names, list(itertools.product(*params))


def _jsonable(value: Any) -> Any:
    """A parameter value as strict JSON holds it: NaN and infinities (and anything not plain) as their repr."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


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
    """asv's params: one list of values, or a list of such lists (their cartesian product)."""
    if not isinstance(value, (list, tuple)):
        return False
    nested = [isinstance(v, (list, tuple)) for v in value]
    return not any(nested) or all(nested)


LATER_FIELDS = ("rounds",)

ATTRIBUTES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "params": (_params, "a list of values, or a list of lists of values"),
    "param_names": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v), "a list of names"),
    "timeout": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "number": (lambda v: _whole(v) and v >= 0, "a whole number of calls per sample (0: calibrated)"),
    "repeat": (_repeat, "a whole number of samples (0: the default) or (min_repeat, max_repeat, max_time) "
                        "with 1 <= min_repeat <= max_repeat and max_time >= 0 seconds"),
    "warmup_time": (_number, "a number of seconds (negative: the default)"),
    "sample_time": (lambda v: _number(v) and v > 0, "a number of seconds > 0"),
    "rounds": (lambda v: _whole(v) and v >= 1, "a whole number of rounds of fresh processes >= 1"),
    "unit": (lambda v: isinstance(v, str) and bool(v.strip()), "a unit name such as 'seconds' or 'samples/s'"),
    "sizes": (lambda v: isinstance(v, (list, tuple)) and bool(v) and all(s in SIZES for s in v),
              f"a list of suite sizes out of {', '.join(SIZES)}"),
}


def check_attributes(file: Path, name: str, owners: tuple[Any, ...]) -> None:
    """Raise SuiteLoadError naming the file, the benchmark and the attribute for the first bad attribute."""
    for attr, (valid, expected) in ATTRIBUTES.items():
        value = lookup_attr(attr, *owners)
        if value is not None and not valid(value):
            raise SuiteLoadError(f"{file}: benchmark {name}: {attr} = {value!r} is not valid; "
                                 f"it must be {expected}")


def benchmark_name(module: str, qualname: str, names: list[str], values: tuple[Any, ...]) -> str:
    if not names:
        return f"{module}.{qualname}"
    args = ", ".join(f"{n}={v!r}" for n, v in zip(names, values))
    return f"{module}.{qualname}({args})"


def collect(module: ModuleType, file: Path, module_name: str) -> list[Benchmark]:
    """Every benchmark in an imported suite module, expanded over its parameter grid."""
    targets: list[tuple[str, Any, Any]] = []  # (qualname, function, class or None)
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_"):
            for meth_name, meth in inspect.getmembers(obj, callable):
                if meth_name.startswith(tuple(KINDS) + UNSUPPORTED_PREFIXES):
                    targets.append((f"{name}.{meth_name}", meth, obj))
        elif inspect.isfunction(obj) and obj.__module__ == module.__name__ and name.startswith(tuple(KINDS) + UNSUPPORTED_PREFIXES):
            targets.append((name, obj, None))

    found = []
    for qualname, func, cls in targets:
        short = qualname.rsplit(".", 1)[-1]
        prefix = next((p for p in (*KINDS, *UNSUPPORTED_PREFIXES) if short.startswith(p)))
        kind = KINDS.get(prefix, prefix.rstrip("_"))
        owners = (func, cls) if cls is not None else (func,)  # asv reads no module-level attributes
        check_attributes(file, f"{module_name}.{qualname}", owners)
        names, grid = param_grid(cls if cls is not None else func)
        repeat = lookup_attr("repeat", *owners, default=None)
        for index, values in enumerate(grid):
            found.append(
                Benchmark(
                    name=benchmark_name(module_name, qualname, names, values),
                    file=str(file),
                    module=module_name,
                    qualname=qualname,
                    param_index=index,
                    params={n: _jsonable(v) for n, v in zip(names, values)},
                    kind=kind,
                    unit=lookup_attr("unit", *owners, default=DEFAULT_UNITS.get(kind, "unitless")),
                    higher_is_better=bool(lookup_attr("higher_is_better", *owners, default=False)),
                    sizes=tuple(lookup_attr("sizes", *owners, default=SIZES)),
                    timeout=lookup_attr("timeout", *owners, default=None),
                    number=lookup_attr("number", *owners, default=None) or None,
                    repeat=list(repeat) if isinstance(repeat, tuple) else repeat,
                    warmup_time=lookup_attr("warmup_time", *owners, default=None),
                    sample_time=lookup_attr("sample_time", *owners, default=None),
                    rounds=lookup_attr("rounds", *owners, default=None),
                    unsupported=None if prefix in KINDS else f"{prefix} benchmarks are asv-only; run them with asv",
                )
            )
    return found


def discover(paths: list[Path]) -> list[Benchmark]:
    """Import every suite file under ``paths`` and list its benchmarks; raises SuiteLoadError."""
    benchmarks: list[Benchmark] = []
    for file, module_name in suite_files(paths):
        benchmarks += collect(import_suite(file, module_name), file, module_name)
    return benchmarks


def resolve_target(module: ModuleType, qualname: str, param_index: int) -> tuple[Any, tuple[Any, ...], Any]:
    """(owner instance or module, parameter values, bound callable) for one benchmark."""
    if "." in qualname:
        cls_name, meth_name = qualname.split(".", 1)
        cls = getattr(module, cls_name)
        _, grid = param_grid(cls)
        instance = cls()
        return instance, grid[param_index], getattr(instance, meth_name)
    func = getattr(module, qualname)
    _, grid = param_grid(func)
    return module, grid[param_index], func
