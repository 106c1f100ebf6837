"""perfwatch: profiling and continuous benchmarking for PyTorch training pipelines.

Importing perfwatch is cheap: torch is imported only by the parts that use it.
"""

from .alerts import AlertSinks, send_alerts
from .compare import Verdict, compare_runs
from .config import Config, load_config
from .env import fingerprint
from .errors import BenchmarkFailed, PerfwatchError, RegressionFound, UserError
from .instrument import PHASES, StepRecord, StepTimer
from .monitoring import monitor
from .profile import ProfileOptions, run_profile
from .results import FORMAT_VERSION, BenchResult, RunRecord
from .runner import discover, run_suite, select
from .store import Store
from .suite import by_size, current_size
from .tune import TuneResult, tune_loader

__all__ = [
    "FORMAT_VERSION",
    "PHASES",
    "AlertSinks",
    "BenchResult",
    "BenchmarkFailed",
    "Config",
    "PerfwatchError",
    "ProfileOptions",
    "RegressionFound",
    "RunRecord",
    "StepRecord",
    "StepTimer",
    "Store",
    "TuneResult",
    "UserError",
    "Verdict",
    "by_size",
    "compare_runs",
    "current_size",
    "discover",
    "fingerprint",
    "load_config",
    "monitor",
    "run_profile",
    "run_suite",
    "select",
    "send_alerts",
    "tune_loader",
]
