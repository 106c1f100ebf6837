"""Git for paired runs (and bisection): the repository root, a ref resolved to a commit, and
a commit checked out in a temporary worktree that is removed afterwards.

A run killed outright (kill -9) runs no ``finally``: its worktree stays registered in the
repository. Each worktree's temporary directory names its owner (pid and start time, as the
runner's scratch directories do), so the next run removes the ones whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from perfwatch.bench import runner
from perfwatch.errors import UserError

GIT_TIMEOUT = 120.0
HOLDER_PREFIX = "perfwatch-against-"  # the temporary directory that holds a worktree (and its owner file)


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run git in ``root``; never raises for git's own failures (the caller words the error)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise UserError("git is not installed; comparing with a git ref needs git to check it out", setting="ref") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"git {' '.join(args)} did not finish in {GIT_TIMEOUT:g} s in {root}") from None


def repository_root(directory: Path) -> Path:
    """The top of the git working tree around ``directory``."""
    done = git(directory, "rev-parse", "--show-toplevel") if directory.is_dir() else None
    if done is None or done.returncode != 0:
        raise UserError(f"{directory}: not inside a git repository; a comparison with a git ref runs in one "
                        "(or compare against a baseline file)", setting="ref")
    return Path(done.stdout.strip()).resolve()


def resolve_commit(root: Path, ref: str) -> str:
    """The full hash of the commit ``ref`` names."""
    done = git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise UserError(f"{ref!r}: no such commit in {root}; pass a branch, tag or commit "
                        "(a shallow CI clone may need `git fetch` of it first)", setting="ref")
    return done.stdout.strip()


@contextlib.contextmanager
def checked_out(root: Path, commit: str) -> Iterator[Path]:
    """``commit`` checked out (detached) in a temporary git worktree, removed afterwards, even on Ctrl-C;
    the worktrees an earlier, killed run left in ``root`` are removed first."""
    remove_abandoned(root)
    holder = Path(tempfile.mkdtemp(prefix=HOLDER_PREFIX))
    tree = holder / "tree"
    try:
        (holder / runner.OWNER).write_text(json.dumps({"pid": os.getpid(), "started": runner.started(os.getpid())}))
        done = git(root, "worktree", "add", "--detach", str(tree), commit)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"git worktree add of {commit[:12]} failed: {last}")
        yield tree
    finally:
        git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(holder, ignore_errors=True)
        git(root, "worktree", "prune")


def remove_abandoned(root: Path) -> list[Path]:
    """Remove what runs that are gone left (runner.abandoned): their worktrees registered in ``root``, and
    their temporary directories (a worktree of another repository there is then pruned by its next run);
    returns the worktrees removed from ``root``."""
    listing = git(root, "worktree", "list", "--porcelain").stdout.splitlines()
    trees = [Path(line.removeprefix("worktree ")) for line in listing if line.startswith("worktree ")]
    removed = [tree for tree in trees
               if tree.parent.name.startswith(HOLDER_PREFIX) and runner.abandoned(tree.parent) is not None]
    for tree in removed:
        git(root, "worktree", "remove", "--force", str(tree))
    holders = {tree.parent for tree in removed} | set(Path(tempfile.gettempdir()).glob(f"{HOLDER_PREFIX}*"))
    for holder in holders:
        if runner.abandoned(holder) is not None:
            shutil.rmtree(holder, ignore_errors=True)
    git(root, "worktree", "prune")  # also those whose directory is gone
    return removed


def moved(path: Path, old_root: Path, new_root: Path) -> Path:
    """``path`` under ``new_root`` where it lies under ``old_root``; elsewhere it is the same on both sides."""
    try:
        return new_root / path.relative_to(old_root)
    except ValueError:
        return path
