"""Figures without pyplot: every plot function builds a ``matplotlib.figure.Figure`` on the Agg
canvas, so nothing depends on a display, figures are not kept alive by pyplot's registry, and
``save_figure`` writes PNGs the same way in a terminal, a test or a notebook (where the returned
Figure is shown by IPython's inline formatter)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: the figures docs/*.md show are committed: small and legible at this resolution
DEFAULT_DPI = 100


def new_figure(
    width: float = 6.4, height: float = 4.8, *, nrows: int = 1, ncols: int = 1, **subplot_kw
) -> tuple[Figure, list]:
    """A Figure on the Agg canvas with a grid of axes (returned as a flat list)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` as PNG (creating parent folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
