"""Machine and software fingerprint stored with every run.

Numbers are only comparable on the same machine and software, so each run
records what it ran on; ``machine_id`` is a short hash of the hardware facts,
used to warn when runs from different machines are compared.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from perfwatch.gpu import gpu_inventory

# Variables that change how many threads torch, BLAS and OpenMP use.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "TORCH_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name; ``platform.processor()`` is often empty on Linux."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# CPU instructions for bf16 matrix math (Cooper Lake / Zen 4 and later; AMX from Sapphire Rapids): where
# they are missing, bf16 autocast on the CPU emulates and gains little or nothing.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of ``BF16_CPU_FLAGS`` the CPU has (its first ``flags`` line); [] where none or unreadable."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return sorted(BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def package_version(name: str) -> str | None:
    """Installed version without importing the package (torch takes seconds to import)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_output(cwd: Path | None, *args: str, stdin: str | None = None) -> str | None:
    """What ``git ARGS`` prints in ``cwd``, stripped; None when git is missing, fails or hangs."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit_time(cwd: Path | None, ref: str) -> str | None:
    """The committer date of commit ``ref`` in UTC, ISO 8601 (as ``created`` is written); None if git cannot say.

    The committer date, not the author date: it is when the commit entered the history (a rebase or a
    cherry-pick renews it), so it follows the order of a branch better.
    """
    seconds = git_output(cwd, "show", "-s", "--no-show-signature", "--format=%ct", "--end-of-options", f"{ref}^{{commit}}")
    if not seconds or not seconds.isdigit():
        return None
    return datetime.fromtimestamp(int(seconds), timezone.utc).isoformat()


def ci_branch(environ: Mapping[str, str] = os.environ) -> str | None:
    """The branch a CI job says it checked out, where git cannot (a detached HEAD): GitHub Actions'
    pull-request source branch, else its pushed branch; GitLab's merge-request source, else its branch."""
    github_branch = environ.get("GITHUB_REF_NAME") if environ.get("GITHUB_REF_TYPE") == "branch" else None
    for value in (environ.get("GITHUB_HEAD_REF"), github_branch,
                  environ.get("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"), environ.get("CI_COMMIT_BRANCH")):
        if value:
            return value
    return None


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """Commit, its time, branch and dirty flag of the repository around ``cwd``; nulls outside one.

    On a detached HEAD (a CI checkout of a pull request) the branch is the one the CI names
    (ci_branch), else null (a bisection step, a checkout of a tag).
    """
    commit = git_output(cwd, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_commit_time": None, "git_branch": None, "git_dirty": False}
    status = git_output(cwd, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_commit_time": commit_time(cwd, commit),
        "git_branch": git_output(cwd, "symbolic-ref", "--quiet", "--short", "HEAD") or ci_branch(),
        "git_dirty": bool(status),
    }


def machine_id(env: dict[str, Any]) -> str:
    """Hash of the facts that make timings comparable: host, CPU, cores, memory, GPU."""
    gpu = env.get("gpu") or {}
    key = "|".join(
        str(x)
        for x in (env["host"], env["cpu"], env["cpu_cores_logical"], env["memory_bytes"], gpu.get("model"), gpu.get("count"))
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def fingerprint(cwd: Path | None = None) -> dict[str, Any]:
    """Everything a reader needs to judge whether two runs are comparable."""
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16_flags(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(psutil.Process().cpu_affinity()) if hasattr(psutil.Process, "cpu_affinity") else None,
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": list(os.getloadavg()),  # how busy the machine was when the run began
        "gpu": gpu_inventory(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": package_version("torch"),
        "numpy": package_version("numpy"),
        "perfwatch": package_version("perfwatch"),
        "thread_env": {name: os.environ[name] for name in THREAD_ENV_VARS if name in os.environ},
    }
    env.update(git_state(cwd))
    env["machine_id"] = machine_id(env)
    return env
