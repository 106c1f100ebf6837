"""What asv calls a benchmark and which version it is, rule for rule as asv_runner has them.

A suite's names, parameter labels, attribute lookups and versions must be the ones asv
gives it, or a suite moved from asv (and its history) would not line up: the kind is read
off the name (``time_``, ``timeraw_``, ``mem_``, ``peakmem_``, ``track_`` or ``TimeX``...),
an attribute comes from the first of (method, instance, module) that sets it, parameters
are labelled by their repr without a memory address, and a benchmark without an explicit
``version`` is versioned by the SHA-256 of its source (asv_runner ``benchmarks/_base.py``).
"""

from __future__ import annotations

import inspect
import itertools
import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

# asv_runner's benchmark types in the order it registers them (its submodules, sorted); the first match wins.
KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("mem", re.compile(r"^(Mem[A-Z_].+)|(mem_.+)$")),
    ("peakmem", re.compile(r"^(PeakMem[A-Z_].+)|(peakmem_.+)$")),
    ("time", re.compile(r"^(Time[A-Z_].+)|(time_.+)$")),
    ("timeraw", re.compile(r"^(Timeraw[A-Z_].+)|(timeraw_.+)$")),
    ("track", re.compile(r"^(Track[A-Z_].+)|(track_.+)$")),
)
DEFAULT_UNITS = {"time": "seconds", "timeraw": "seconds", "mem": "bytes", "peakmem": "bytes", "track": "unitless"}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+(?=>)")  # "<Foo object at 0x7f3a...>": the part that changes every run


def kind_of(name: str) -> str | None:
    """The benchmark kind asv reads off a (method or function) name, or None: not a benchmark."""
    return next((kind for kind, regex in KINDS if regex.match(name)), None)


def first_attr(sources: Sequence[Any], name: str, default: Any = None) -> Any:
    """asv's attribute lookup: the first source (method, instance, module) where ``name`` is set and not None."""
    for source in sources:
        value = getattr(source, name, None)
        if value is not None:
            return value
    return default


def all_attrs(sources: Sequence[Any], name: str) -> list[Any]:
    """Every source's ``name`` in any letter case (``setup``, ``setUp``), as asv finds setup and teardown.
    Raises ValueError when one source has two spellings of it."""
    found = []
    for source in sources:
        values = [getattr(source, key) for key in dir(source) if key.lower() == name]
        if len(values) > 1:
            raise ValueError(f"{getattr(source, '__name__', source)!s} contains multiple {name} functions")
        found += [v for v in values if v is not None]
    return found


def setups(sources: Sequence[Any]) -> list[Any]:
    """The setup hooks in the order asv runs them: module, then class, then the method's own."""
    return all_attrs(sources, "setup")[::-1]


def teardowns(sources: Sequence[Any]) -> list[Any]:
    """The teardown hooks in asv's order: the method's own, then class, then module."""
    return all_attrs(sources, "teardown")


def param_lists(sources: Sequence[Any]) -> tuple[list[str], list[list[Any]]]:
    """(names, value lists) of ``params``/``param_names``: a flat list is one parameter, a list of lists
    (or of tuples) one per parameter; names are cut or filled up with ``paramN`` to match."""
    params = list(first_attr(sources, "params", []))
    names = [str(n) for n in first_attr(sources, "param_names", [])]
    if params and not isinstance(params[0], (tuple, list)):
        params = [params]
    else:
        params = [list(entry) for entry in params]
    names = names[: len(params)] + [f"param{k + 1}" for k in range(len(names), len(params))]
    return names, params


def combination(value_lists: list[list[Any]], index: int) -> tuple[Any, ...]:
    """Combination number ``index`` of the parameter values, counted in asv's order (its ``param_idx``)."""
    for values in itertools.islice(itertools.product(*value_lists), index, None):
        return values
    raise IndexError(f"no parameter combination {index}; the suite's params changed since discovery")


def repr_no_address(value: Any) -> str:
    """A value's repr with any ``at 0x...`` address taken out, so that its label is the same every run.

    asv takes the address out of a default repr (``<Foo object at 0x...>`` -> ``<Foo object>``); this
    also takes it out where the repr holds one further in (``[<Foo object at 0x...>]``).
    """
    return ADDRESS.sub("", repr(value))


def param_ids(value_lists: list[list[Any]]) -> list[list[str]]:
    """asv's label of every parameter value: its repr without address; equal labels of one parameter
    are told apart by a number, ``<Foo object> (0)``, ``<Foo object> (1)``."""
    labelled = []
    for values in value_lists:
        ids = [repr_no_address(v) for v in values]
        repeated = {label: 0 for label, count in Counter(ids).items() if count > 1}
        for j, label in enumerate(ids):
            if label in repeated:
                ids[j] = f"{label} ({repeated[label]})"
                repeated[label] += 1
        labelled.append(ids)
    return labelled


def source_code(items: Sequence[Any]) -> str:
    """The source text asv hashes for a benchmark's version: each item's source (or ``pretty_source``),
    dedented, a method's wrapped in its class; items without source are left out."""
    sources: list[str] = []
    prev_class_name = None
    for func in items:
        if hasattr(func, "pretty_source"):
            src = textwrap.dedent(func.pretty_source).lstrip()
        else:
            try:
                lines, _ = inspect.getsourcelines(func)
            except (TypeError, OSError):  # asv stops at OSError (no source file); perfwatch leaves the item out
                continue
            if not lines:
                continue
            src = textwrap.dedent("\n".join(line.rstrip() for line in lines))
        class_name = None
        if inspect.ismethod(func):
            names = getattr(func, "__qualname__", "").split(".")
            if len(names) > 1:
                class_name = names[-2]
        if class_name and prev_class_name != class_name:
            src = "class {}:\n    {}".format(class_name, src.replace("\n", "\n    "))
        elif class_name:
            src = "    " + src.replace("\n", "\n    ")
        sources.append(src)
        prev_class_name = class_name
    return "\n\n".join(sources).rstrip()


def code_hash(code: str) -> str:
    """asv's version of a benchmark that sets none: the SHA-256 of its source text."""
    return sha256(code.encode("utf-8")).hexdigest()


def timeraw_env(value: Any) -> dict[str, str] | None:
    """A timeraw benchmark's ``env`` as asv uses it: string keys and values, None when empty or unset."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"env must be a dict of environment variables, not {type(value).__name__}")
    if any(v is None for v in value.values()):
        raise TypeError("env values must not be None; leave the variable out instead")
    return {str(k): str(v) for k, v in value.items()} or None


def timeraw_code(code: str, env: dict[str, str] | None) -> str:
    """The text asv hashes for a timeraw benchmark: its source, and the environment it runs in."""
    return code + "\n# timeraw_env\n" + repr(sorted(env.items())) if env else code


def setup_cache_key(func: Any) -> str | None:
    """asv's key of a ``setup_cache``: its module (inside the benchmark dir) and first line. Classes that
    share one setup_cache (by inheritance, or at module level) share the key, and so the cache."""
    if func is None:
        return None
    module = inspect.getmodule(func)
    mname = ".".join(module.__name__.split(".", 1)[1:]) if module is not None else ""
    if not mname:
        mname = inspect.getsourcefile(func) or ""
    return f"{mname}:{inspect.getsourcelines(func)[1]}"
