"""perfwatch: profiling and continuous benchmarking for PyTorch training pipelines.

Importing perfwatch is cheap: torch is imported only by the parts that use it.
"""

from .config import Config, load_config
from .env import fingerprint
from .errors import BenchmarkFailed, PerfwatchError, RegressionFound, UserError
from .instrument import PHASES, StepRecord, StepTimer
from .monitoring import monitor
from .results import FORMAT_VERSION, BenchResult, RunRecord
from .runner import discover, run_suite, select
from .store import Store
from .suite import by_size, current_size

__all__ = [
    "FORMAT_VERSION",
    "PHASES",
    "BenchResult",
    "BenchmarkFailed",
    "Config",
    "PerfwatchError",
    "RegressionFound",
    "RunRecord",
    "StepRecord",
    "StepTimer",
    "Store",
    "UserError",
    "by_size",
    "current_size",
    "discover",
    "fingerprint",
    "load_config",
    "monitor",
    "run_suite",
    "select",
]
