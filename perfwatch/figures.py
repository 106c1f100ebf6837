"""matplotlib figures for the reports: object API (``Figure`` with the Agg renderer, no
pyplot state), imported only when something is drawn.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from perfwatch.pages import Figure, encodable

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure as MplFigure

P = ParamSpec("P")
R = TypeVar("R")

FIGURE_DPI = 100


def new_figure(width: float, height: float) -> MplFigure:
    """A figure on a canvas that draws every string, whichever artist holds it (titles, tick labels,
    legends): a lone surrogate in a user's name, which FreeType cannot lay out (a TypeError in
    matplotlib), is drawn as its escape."""
    import matplotlib.figure  # loads only to draw
    from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg

    class Renderer(RendererAgg):
        def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
            return super().draw_text(gc, x, y, encodable(s), prop, angle, ismath, mtext)

        def get_text_width_height_descent(self, s, prop, ismath):
            return super().get_text_width_height_descent(encodable(s), prop, ismath)

    class Canvas(FigureCanvasAgg):
        size = None  # the (width, height, dpi) its renderer was made for: a new one only when it changes

        def get_renderer(self):
            size = (*self.get_width_height(physical=True), self.figure.dpi)
            if self.size != size:
                self.renderer, self.size = Renderer(*size), size
            return self.renderer

    fig = matplotlib.figure.Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    Canvas(fig)
    return fig


def save_figure(fig: MplFigure, out: Path, name: str, caption: str) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    (out / name).write_bytes(buffer.getvalue())
    return Figure(name, caption, buffer.getvalue())


def percent_axis(axis: Axis) -> None:
    """Ratios 0..1 on ``axis`` read as percentages."""
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


def plain_text(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw with ``$`` taken literally: matplotlib reads text between two ``$`` as mathtext,
    and a benchmark or function name holding them would fail to parse (or draw as math)."""

    @functools.wraps(draw)
    def drawing(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawing
