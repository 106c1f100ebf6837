"""One exception tree for perfwatch; only cli.py turns these into messages and exit codes.

Exit codes (docs/architecture.md): 0 ok, 1 confirmed regression, 2 usage or input error,
3 a benchmark or watched command failed.
"""


class PerfwatchError(Exception):
    """Base of every error perfwatch raises on purpose. The message is one line."""

    exit_code = 2


class UserError(PerfwatchError):
    """Bad input: a missing path, a broken suite file, a corrupt results file, a bad option.

    The message names the file, benchmark or option and says what to do.
    """

    exit_code = 2


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
