"""perfwatch: profiling and continuous benchmarking for PyTorch training pipelines.

Importing perfwatch is cheap: every public name is exported lazily (PEP 562), so
``from perfwatch import StepTimer`` in a training loop loads the timer alone, not
prometheus_client, psutil, pandas, matplotlib, rich, click or torch. The map of the
package is docs/architecture.md.
"""

import importlib as _importlib

# public name -> the module that defines it
_EXPORTS = {
    "AlertSinks": "perfwatch.config",
    "BenchResult": "perfwatch.results",
    "BenchmarkFailed": "perfwatch.errors",
    "Config": "perfwatch.config",
    "FORMAT_VERSION": "perfwatch.results",
    "PHASES": "perfwatch.instrument",
    "PerfwatchError": "perfwatch.errors",
    "ProfileOptions": "perfwatch.profile.run",
    "RegressionFound": "perfwatch.errors",
    "RunRecord": "perfwatch.results",
    "StepRecord": "perfwatch.instrument",
    "StepTimer": "perfwatch.instrument",
    "Store": "perfwatch.store",
    "TuneResult": "perfwatch.tune.search",
    "UserError": "perfwatch.errors",
    "Verdict": "perfwatch.regress.compare",
    "by_size": "perfwatch.bench.suite",
    "compare_runs": "perfwatch.regress.compare",
    "current_size": "perfwatch.bench.suite",
    "discover": "perfwatch.bench.runner",
    "fingerprint": "perfwatch.env",
    "load_config": "perfwatch.config",
    "monitor": "perfwatch.monitoring.session",
    "run_against": "perfwatch.bench.paired",
    "run_profile": "perfwatch.profile.run",
    "run_suite": "perfwatch.bench.runner",
    "select": "perfwatch.bench.runner",
    "send_alerts": "perfwatch.regress.alerts",
    "tune_loader": "perfwatch.tune.measure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'perfwatch' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
