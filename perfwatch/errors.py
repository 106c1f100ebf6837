"""One exception tree for perfwatch; only perfwatch/cli turns these into messages and exit codes.

::

    PerfwatchError                     raised on purpose; the message is one line
    ├── UserError                      exit 2: bad input, named, with what to do
    │   ├── ThresholdError             (also a ValueError) a threshold spec that cannot be read
    │   ├── StoreUnavailable           a store that cannot take a run now (server away, file locked)
    │   ├── RunExists                  a run of that id is stored already: never overwritten
    │   └── WatchedProcessNotFound     (also a ProcessLookupError) no process with the PID to watch
    ├── BenchmarkFailed                exit 3: a benchmark or a watched command failed
    └── RegressionFound                exit 1: a confirmed performance regression

Any other exception reaching the CLI is a bug: exit INTERNAL_ERROR_EXIT (70), one line that
says to rerun with ``--debug`` and report the traceback. Exceptions that never leave their
module stay there, outside this tree: bench.paired.WorkerLost and bench.suite.SuiteLoadError
become a failed benchmark, tune.search._BudgetSpent ends a search.

Library messages name no command-line flag, since the library is also called from Python.
A UserError about one setting names that setting with ``setting=``, by the parameter name
the CLI gives the option that sets it (``out``, ``results_dir``); the running command then
adds its flag: "...; choose another output directory (--out)". Exit codes are listed in
docs/architecture.md.
"""

INTERNAL_ERROR_EXIT = 70  # sysexits.h EX_SOFTWARE: not bad input (2), a bug in perfwatch


class PerfwatchError(Exception):
    """Base of every error perfwatch raises on purpose. The message is one line."""

    exit_code = 2


class UserError(PerfwatchError):
    """Bad input: a missing path, a broken suite file, a corrupt results file, a bad option.

    The message names the file, benchmark or option and says what to do; ``setting`` names the
    setting at fault, for the CLI to add the flag that sets it.
    """

    def __init__(self, message: str, *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class ThresholdError(UserError, ValueError):
    """A threshold spec that cannot be read; a ValueError, and a UserError for the CLI (exit 2)."""


class StoreUnavailable(UserError):
    """The store cannot be reached now (its server is down or away, its file locked): trying again later
    may work, so ``run`` measures anyway and the run waits in the spool for ``perfwatch store sync``."""


class RunExists(UserError):
    """A run with that id is stored already (an import or a sync that another process got to first);
    nothing is overwritten, and a caller that only wants the run kept takes it as done."""


class WatchedProcessNotFound(UserError, ProcessLookupError):
    """The PID given to watch does not exist."""


class BenchmarkFailed(PerfwatchError):
    """A benchmark or a watched command failed; the run itself was still recorded."""

    exit_code = 3


class RegressionFound(PerfwatchError):
    """A confirmed performance regression (over threshold and statistically significant)."""

    exit_code = 1


def one_line(exc: BaseException) -> str:
    """An exception as one line for a message: its type and text, or a worker traceback's last line."""
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:  # a DataLoader worker's error: its last line says what
        return text.splitlines()[-1].strip()
    text = " ".join(text.split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
