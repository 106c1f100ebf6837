"""Where perfwatch's reference suites and Grafana assets are, and copying the Grafana assets out.

A wheel carries the repo's top-level suites/ and grafana/ inside the package, as perfwatch/_suites
and perfwatch/_grafana (pyproject.toml maps them); a source checkout, editable installs included,
has them beside the package. Plain paths rather than importlib.resources: the benchmark workers
import suite files by path, and an editable install does not map grafana/, a directory of data
and no package, for importlib.
"""

from __future__ import annotations

from pathlib import Path

from perfwatch.errors import UserError

PACKAGE = Path(__file__).resolve().parent


def _locate(name: str) -> Path | None:
    for candidate in (PACKAGE / f"_{name}", PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    return None


SUITES = _locate("suites")
GRAFANA = _locate("grafana")


def export_grafana(dest: Path, force: bool = False) -> list[tuple[str, Path]]:
    """Copy the Grafana assets into ``dest``, layout kept, and say per file what happened:
    ``wrote``, ``unchanged`` or ``replaced``.

    The layout is kept because prometheus.yml names its rules and targets relative to itself.
    A file that differs from perfwatch's copy (the user's edit) is replaced only with ``force``;
    when one is refused, nothing is written.
    """
    if GRAFANA is None:
        raise UserError("perfwatch's Grafana assets are not installed here; reinstall perfwatch")
    plan = []
    differing = []
    for source in sorted(p for p in GRAFANA.rglob("*") if p.is_file()):
        target = dest / source.relative_to(GRAFANA)
        data = source.read_bytes()
        if not target.exists():
            plan.append(("wrote", target, data))
        elif target.is_file() and target.read_bytes() == data:
            plan.append(("unchanged", target, data))
        else:
            differing.append(target)
            plan.append(("replaced", target, data))
    if differing and not force:
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        raise UserError(f"{differing[0]}{more} differs from perfwatch's copy; force the export to overwrite "
                        f"{'them' if more else 'it'}", setting="force")
    for action, target, data in plan:
        if action != "unchanged":
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except OSError as exc:
                raise UserError(f"{target}: cannot write it: {exc.strerror or exc}") from None
    return [(action, target) for action, target, _ in plan]
