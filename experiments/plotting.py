"""Figure helpers for the experiments: re-exported from zoo (matplotlib, Agg backend)."""

from zoo.common.plotting import grid_figure, image_grid, plt  # noqa: F401
from zoo.report import markdown_table  # noqa: F401
