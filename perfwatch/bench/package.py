"""A benchmark directory imported as a package, and its modules walked, as asv does it.

asv imports the benchmark directory as a package named after it (without putting its parent
on ``sys.path``) and walks it with ``pkgutil``: every module, then every subpackage that has an
``__init__.py``, so ``from .common import ...`` and shared modules work. perfwatch does the
same, but where the directory's name would shadow a module that is already loaded or that the
suite could import (a directory called ``json``, ``profile`` or ``perfwatch``) or cannot be a
module name (``bench.v2``), the package gets a private name instead; names inside the suite
are the same either way. A module that fails to import is one line naming its file.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import pkgutil
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from types import ModuleType


class SuiteLoadError(Exception):
    """A suite could not be imported or read; the message is one line naming the file (and line)."""


def shown(path: Path | str) -> str:
    """A path as messages show it: relative to the current directory when inside it."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def package_name(root: Path) -> str:
    """The name ``root`` is imported under: its own, unless that is no module name or would shadow a module
    that is loaded, built in, or importable from elsewhere on ``sys.path``."""
    name = root.name
    if name and "." not in name and name not in sys.modules and name not in sys.builtin_module_names:
        elsewhere = [p for p in sys.path if Path(p or ".").resolve() != root.parent]
        found = importlib.machinery.PathFinder.find_spec(name, elsewhere)
        if found is None or found.origin is None:  # nothing, or only a namespace portion: nothing shadowed
            return name
    slug = re.sub(r"\W", "_", name) or "root"
    return f"perfwatch_suite_{slug}_{sha256(str(root).encode()).hexdigest()[:8]}"


IMPORTED: dict[Path, ModuleType] = {}  # benchmark dir -> its package, in this process


def import_root(root: Path) -> ModuleType:
    """Import the benchmark directory ``root`` (absolute) as a package, once per process."""
    if root in IMPORTED:
        return IMPORTED[root]
    name = package_name(root)
    init = root / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(root)])
    else:  # no __init__.py: a namespace package, as Python (and asv) import it
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001  (whatever the suite raises, SystemExit too, is its error line)
        del sys.modules[name]
        raise SuiteLoadError(import_failure(init, exc)) from None
    IMPORTED[root] = module
    return module


def import_module(root: Path, module: str) -> ModuleType:
    """Module ``module`` (dotted, relative to the benchmark dir; "" for its ``__init__``) of the suite at ``root``."""
    package = import_root(root)
    if not module:
        return package
    try:
        return importlib.import_module(f"{package.__name__}.{module}")
    except BaseException as exc:  # noqa: BLE001  (as above)
        raise SuiteLoadError(import_failure(module_file(root, module), exc)) from None


def module_file(root: Path, module: str) -> Path:
    """The file of ``module`` inside ``root``: ``a/b.py``, else the package ``a/b/__init__.py``."""
    base = root.joinpath(*module.split("."))
    plain = base.with_name(base.name + ".py")
    return plain if plain.is_file() or not (base / "__init__.py").is_file() else base / "__init__.py"


def import_failure(file: Path, exc: BaseException) -> str:
    """One line for a module that failed to import: the file and line, and the error."""
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename) == file:
        return f"{shown(file)}:{exc.lineno}: syntax error: {exc.msg}; fix the suite file"
    line = next((ln for frame, ln in reversed(list(traceback.walk_tb(exc.__traceback__)))
                 if Path(frame.f_code.co_filename) == file), None)
    where = f"{shown(file)}:{line}" if line else shown(file)
    message = " ".join(str(exc).split())
    return f"{where}: importing the suite failed: {type(exc).__name__}" + (f": {message}" if message else "")


@dataclass(frozen=True)
class Found:
    """One module of a suite: imported, or the one-line reason it did not import."""

    name: str  # dotted, relative to the benchmark dir ("" for its __init__)
    file: Path
    module: ModuleType | None
    error: str | None = None


def walk(root: Path, start: str = "", single: bool = False) -> Iterator[Found]:
    """The modules of the suite at ``root`` from ``start`` down, in asv's order (pkgutil's, depth first);
    ``single``: ``start`` alone. A module that fails is reported and its subpackage not entered."""
    try:
        module = import_module(root, start)
    except SuiteLoadError as exc:
        yield Found(start, module_file(root, start) if start else root / "__init__.py", None, str(exc))
        return
    yield Found(start, Path(getattr(module, "__file__", None) or root / "__init__.py"), module)
    if single or not getattr(module, "__path__", None):
        return
    for info in pkgutil.iter_modules(module.__path__):
        yield from walk(root, f"{start}.{info.name}" if start else info.name)


def selection(root: Path, path: Path) -> tuple[str, bool]:
    """(module, single) that ``path`` (``root`` itself, a directory or a .py file under it) selects."""
    rel = path.relative_to(root)
    if path.is_dir():
        return ".".join(rel.parts), False
    if path.suffix != ".py":
        raise SuiteLoadError(f"{shown(path)}: not a Python file; pass a .py file or a suite directory")
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts), True




def suite_files(root: Path) -> set[Path]:
    """The files of every module of the suite at ``root`` imported in this process."""
    package = IMPORTED.get(root)
    if package is None:
        return set()
    name = package.__name__
    return {Path(m.__file__) for key, m in list(sys.modules.items())
            if (key == name or key.startswith(name + ".")) and getattr(m, "__file__", None)}


def one_line_error(exc: BaseException, files: set[Path]) -> str:
    """``Type: message (file.py:LINE)``, naming the deepest line in one of the suite's ``files``
    (the benchmark's own, or a shared ``common.py``)."""
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        code_file = Path(frame.f_code.co_filename)
        if code_file in files:
            where = f" ({code_file.name}:{line})"
    message = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {message}{where}"
