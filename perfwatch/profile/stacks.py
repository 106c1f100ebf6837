"""py-spy's raw (collapsed) stacks: parsing, and the functions that take most samples."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class Stack:
    """One line of py-spy's raw output: ``count`` samples of one thread with these frames."""

    pid: int | None  # the sampled process (None without --subprocesses)
    tid: int
    thread: str
    frames: tuple[Frame, ...]  # outermost first
    count: int


_PROCESS = re.compile(r'process (\d+):".*?";(?=process \d+:"|thread \()')


_THREAD = re.compile(r"thread \((0x[0-9a-fA-F]+|\d+)\)(?:: ([^;]*))?")


_FRAME = re.compile(r"(.*) \((.+):(\d+)\)$")


def _frame(text: str) -> Frame:
    match = _FRAME.match(text)
    return Frame(match[1], match[2], int(match[3])) if match else Frame(text, "", 0)


def parse_collapsed(text: str) -> list[Stack]:
    """Parse ``py-spy record --format raw --threads [--subprocesses]`` output.

    A line is ``[process PID:"CMD";]... thread (TID): NAME;frame;frame COUNT``: ancestor
    processes first, the sampled one last; frames are ``function (file:line)``.
    """
    stacks = []
    for line in text.splitlines():
        body, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        pid, position = None, 0
        while (process := _PROCESS.match(body, position)) is not None:
            pid, position = int(process[1]), process.end()
        thread = _THREAD.match(body, position)
        if thread is None:
            continue
        rest = body[thread.end():].lstrip(";")
        frames = tuple(_frame(part) for part in rest.split(";")) if rest else ()
        stacks.append(Stack(pid, int(thread[1], 0), thread[2] or "", frames, int(count)))
    return stacks


def top_functions(stacks: list[Stack], limit: int = 15, classify=None) -> list[dict[str, Any]]:
    """Functions by self samples (innermost frame), with their inclusive share."""
    total = sum(s.count for s in stacks)
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    phase_of: dict[tuple[str, str], Counter[str]] = {}
    for stack in stacks:
        if not stack.frames:
            continue
        leaf = (stack.frames[-1].function, stack.frames[-1].file)
        own[leaf] += stack.count
        for key in {(f.function, f.file) for f in stack.frames}:
            inclusive[key] += stack.count
        if classify is not None:
            phase_of.setdefault(leaf, Counter())[classify(stack)] += stack.count
    rows = []
    for (function, file), samples in own.most_common(limit):
        row = {"function": function, "file": file, "self_share": round(samples / total, 4),
               "total_share": round(inclusive[(function, file)] / total, 4)}
        if classify is not None:
            row["phase"] = phase_of[(function, file)].most_common(1)[0][0]
        rows.append(row)
    return rows
