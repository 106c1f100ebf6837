"""Where runs are kept, addressed by a URL: ``sqlite:///PATH`` (the default, embedded, at
``.perfwatch/perfwatch.db``), ``postgresql://...`` (a shared server) or a directory of results
documents (for those who commit them). The commands use one interface (base.RunStore); only
``open_store`` knows the backends, and the SQL one (SQLAlchemy) loads only when it is used.
"""

from __future__ import annotations

from pathlib import Path

from perfwatch.errors import UserError
from perfwatch.store.base import RunStore
from perfwatch.store.directory import DEFAULT_RESULTS_DIR, Store
from perfwatch.store.files import write_atomic
from perfwatch.urls import redact

__all__ = ["DEFAULT_RESULTS_DIR", "DEFAULT_STORE", "RunStore", "Store", "open_store", "write_atomic"]

DEFAULT_STORE = "sqlite:///.perfwatch/perfwatch.db"
SQL_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(address: str | Path, legacy: Path | None = None) -> RunStore:
    """The store at ``address`` (a URL or a directory); runs in the results directory ``legacy``
    are imported into a SQL store on use and never deleted."""
    text = str(address)
    scheme, sep, _ = text.partition("://")
    if not sep:
        return Store(Path(text))
    if scheme.split("+")[0] not in SQL_SCHEMES:
        raise UserError(f"{redact(text)}: unknown store URL scheme {scheme!r}; use sqlite:///PATH, "
                        "postgresql://HOST/DB or a directory", setting="store")
    from perfwatch.store.sql import SqlStore

    return SqlStore(text.replace("postgres://", "postgresql://", 1),
                    legacy=Store(legacy) if legacy is not None else None)
