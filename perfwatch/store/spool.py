"""The local spool: a run bound for a database is first written here, a file of its own
(``.perfwatch/spool/<run_id>.json``, atomically), and removed only once the database has committed
it, so that a server that is down, a password it refuses or a file that stays locked never loses
a run. ``perfwatch store sync`` stores what waits.

An entry is ``{"store": <the store's identity>, "run": <the results document>}``: the identity
holds no password (RunStore.identity), so neither does the spool, and a sync (RunStore.sync) stores
only the entries meant for its store, leaving the others for theirs. The spool knows nothing of
stores: it keeps documents under a name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from perfwatch.errors import UserError
from perfwatch.paths import safe_name
from perfwatch.results import RunRecord
from perfwatch.store.files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_SPOOL = Path(".perfwatch/spool")


@dataclass(frozen=True)
class Entry:
    """A run waiting in the spool for the store named ``store``."""

    path: Path
    store: str
    run: RunRecord


class Spool:
    """The directory of runs waiting for their store; a missing directory is an empty spool."""

    def __init__(self, root: Path | str = DEFAULT_SPOOL):
        self.root = Path(root)

    def put(self, store: str, run: RunRecord) -> Path:
        """Keep ``run`` for ``store`` (its identity) until :meth:`done`; raises OSError if it cannot."""
        path = self.root / f"{safe_name(run.run_id)}.json"
        write_atomic(path, json.dumps({"store": store, "run": run.to_dict()}, allow_nan=False) + "\n")
        return path

    @staticmethod
    def done(path: Path) -> None:
        """The run kept at ``path`` is committed to its store: it no longer waits."""
        path.unlink(missing_ok=True)

    def entries(self) -> Iterator[Entry]:
        """Every readable entry, oldest run first; an unreadable one is skipped with a warning naming it
        (a temporary file of a write that was killed is no entry)."""
        if not self.root.is_dir():
            return
        for path in sorted(p for p in self.root.glob("*.json") if not p.name.startswith(".")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                yield Entry(path, str(data["store"]), RunRecord.from_dict(data["run"], str(path)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping %s: not a spooled run (%s); move it out of %s", path, exc, self.root)
            except UserError as exc:
                log.warning("skipping %s", exc)

    def pending(self, store: str) -> list[Entry]:
        """The entries waiting for the store whose identity is ``store``."""
        return [entry for entry in self.entries() if entry.store == store]


@dataclass
class Synced:
    """What a sync did: run ids stored now, ids found already stored (their entries dropped), how many
    entries still wait for this store (and why, when one failed) and how many wait for other stores."""

    stored: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    left: int = 0
    error: str | None = None
    elsewhere: dict[str, int] = field(default_factory=dict)
