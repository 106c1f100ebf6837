"""Flame graphs of py-spy's collapsed stacks as standalone SVG.

py-spy writes SVG flame graphs only while recording (``--format flamegraph``), and perfwatch
records the ``raw`` collapsed format it also attributes to phases; no installed package
renders collapsed stacks, so this draws them: frames coloured by the phase
attribution.py gives them.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from perfwatch.profile.attribution import frame_phase
from perfwatch.profile.stacks import Stack

FLAME_WIDTH = 1200
FLAME_ROW = 16
FLAME_MIN_SHARE = 0.001  # frames narrower than 0.1% of all samples are left out, as flamegraph.pl does
FLAME_CHAR_PX = 6.6  # average glyph width of the 11px font, to cut labels that do not fit
PHASE_COLOURS = {
    "data_loading": "#d62728", "host_to_device": "#ff7f0e", "forward": "#1f77b4", "backward": "#3b8fd1",
    "optimizer": "#17becf", "sync": "#9467bd", "checkpoint": "#8c564b", "logging": "#bcbd22", "copy": "#c49c94",
    "other": "#9a9a9a",
}


@dataclass
class _Node:
    name: str
    phase: str | None = None
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)

    def child(self, name: str, phase: str | None = None) -> _Node:
        if name not in self.children:
            self.children[name] = _Node(name, phase)
        return self.children[name]


def _frame_colour(node: _Node) -> str:
    """Frames a phase rule knows take the phase's colour; the rest flamegraph.pl's warm hues, by name."""
    if node.phase is not None:
        return PHASE_COLOURS[node.phase]
    digest = hashlib.md5(node.name.encode()).digest()
    red, green, blue = colorsys.hls_to_rgb(0.02 + digest[0] / 255 * 0.1, 0.6 + digest[1] / 255 * 0.15, 0.85)
    return f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"


def flame_graph_svg(stacks: Sequence[Stack], title: str, width: int = FLAME_WIDTH) -> str:
    """A flame graph of py-spy's collapsed stacks as standalone SVG, drawn top-down (an icicle,
    so the widest frames come first on a page): a box per frame as wide as its samples, a
    tooltip (``<title>``) with the full name and share. The levels under the root are the
    process and the thread; frames of one function in one file merge whatever their line."""
    root = _Node("all")
    for stack in stacks:
        levels = ([(f"process {stack.pid}", None)] if stack.pid is not None else []) + [
            (f"thread {stack.thread or stack.tid} ({stack.tid})", None)]
        levels += [(f"{frame.function} ({short_path(frame.file)})", frame_phase(frame)) for frame in stack.frames]
        node = root
        node.count += stack.count
        for name, phase in levels:
            node = node.child(name, phase)
            node.count += stack.count
    total = max(root.count, 1)
    boxes: list[tuple[int, float, float, _Node]] = []  # depth, x, width, node

    def place(node: _Node, depth: int, x: float) -> None:
        boxes.append((depth, x, node.count / total * width, node))
        for child in sorted(node.children.values(), key=lambda n: n.name):
            if child.count / total >= FLAME_MIN_SHARE:
                place(child, depth + 1, x)
            x += child.count / total * width

    place(root, 0, 0.0)
    depth = max(d for d, *_ in boxes) + 1
    top = 28
    height = top + depth * FLAME_ROW + 4
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" font-family="Verdana,sans-serif" font-size="11">'),
             f'<text x="{width / 2:.0f}" y="17" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for level, x, w, node in boxes:
        y = top + level * FLAME_ROW
        share = node.count / total
        fits = int((w - 6) / FLAME_CHAR_PX)
        label = node.name if len(node.name) <= fits else node.name[:fits - 2] + ".."
        tooltip = f"{node.name} — {node.count} samples ({share:.1%})"
        tooltip += f", phase {node.phase}" if node.phase else ""
        text = f'<text x="{x + 3:.1f}" y="{y + 12}">{escape(label)}</text>' if w >= 3 * FLAME_CHAR_PX + 6 else ""
        parts.append(f'<g><title>{escape(tooltip)}</title><rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.5):.1f}" '
                     f'height="{FLAME_ROW - 1}" fill="{_frame_colour(node)}" rx="2"/>{text}</g>')
    parts.append("</svg>")
    return "\n".join(parts)


_LIBRARY = re.compile(r".*/(?:site-packages|dist-packages|lib/python3\.\d+)/")


def short_path(path: str) -> str:
    """A library file from its package (torch/optim/adam.py), the user's relative to the working directory."""
    library = _LIBRARY.match(path)
    if library:
        return path[library.end():]
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative
