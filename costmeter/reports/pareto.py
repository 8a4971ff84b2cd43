"""Pareto fronts over any two metrics, their hypervolume, and the plot.

Pure part: :func:`pareto_mask` (any number of objectives), :func:`hypervolume_2d` and
:func:`pareto_analysis` (results frame in, :class:`ParetoResult` out). Rendering:
:func:`plot_pareto` (PNG/SVG/PDF via matplotlib, imported lazily).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError, UnavailableError
from costmeter.reports.metrics import Metric, key_label, resolve_metric

SERIES_CHOICES = ("device", "runtime", "device_runtime", "precision", "runtime_precision")
REFERENCE_MARGIN = 0.1


def _as_minimisation(points: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    signs = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
    return np.asarray(points, dtype=float) * signs


def pareto_mask(points: Any, maximize: Sequence[bool], block: int = 512) -> np.ndarray:
    """Which rows of ``points`` (n x k) are Pareto-optimal.

    Objective ``j`` is maximised when ``maximize[j]`` is true, else minimised. A row is dominated
    when another row is at least as good in every objective and strictly better in one; equal rows
    do not dominate each other. Rows with a NaN are never on the front and dominate nothing.
    """
    values = np.asarray(points, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(maximize):
        raise ConfigError(f"points must be n x {len(maximize)}; got shape {values.shape}")
    finite = ~np.isnan(values).any(axis=1)
    costs = _as_minimisation(values[finite], maximize)
    on_front = np.ones(len(costs), dtype=bool)
    for start in range(0, len(costs), block):
        chunk = costs[start:start + block]
        no_worse = (costs[None, :, :] <= chunk[:, None, :]).all(axis=2)
        better = (costs[None, :, :] < chunk[:, None, :]).any(axis=2)
        on_front[start:start + block] = ~(no_worse & better).any(axis=1)
    mask = np.zeros(len(values), dtype=bool)
    mask[np.flatnonzero(finite)] = on_front
    return mask


def default_reference(points: Any, maximize: Sequence[bool], margin: float = REFERENCE_MARGIN):
    """A reference point just beyond the worst value of each objective.

    Worst value moved outwards by ``margin`` times the objective's range (or times its magnitude
    when all values are equal; 1.0 when that is zero too).
    """
    values = np.asarray(points, dtype=float)
    values = values[~np.isnan(values).any(axis=1)]
    if len(values) == 0:
        raise ConfigError("no points with both metrics; cannot place a reference point")
    reference = []
    for j, maximise in enumerate(maximize):
        column = values[:, j]
        spread = float(column.max() - column.min()) or abs(float(column.mean())) or 1.0
        worst = float(column.min()) if maximise else float(column.max())
        reference.append(worst - margin * spread if maximise else worst + margin * spread)
    return tuple(reference)


def hypervolume_2d(points: Any, reference: Sequence[float], maximize: Sequence[bool]) -> float:
    """Area dominated by ``points`` (n x 2) and bounded by ``reference``, in metric units squared.

    Points that do not strictly beat the reference in both objectives contribute nothing.
    """
    if len(maximize) != 2 or len(reference) != 2:
        raise ConfigError("hypervolume_2d needs exactly two objectives")
    values = np.asarray(points, dtype=float).reshape(-1, 2)
    values = values[~np.isnan(values).any(axis=1)]
    costs = _as_minimisation(values, maximize)
    ref = _as_minimisation(np.asarray([reference], dtype=float), maximize)[0]
    costs = costs[(costs < ref).all(axis=1)]
    if len(costs) == 0:
        return 0.0
    front = costs[pareto_mask(costs, (False, False))]
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    right_edges = np.append(front[1:, 0], ref[0])
    return float(np.sum((right_edges - front[:, 0]) * (ref[1] - front[:, 1])))


@dataclass
class ParetoResult:
    """A front over two metrics.

    ``points`` has one row per result: label, model_id, device, runtime, precision, series, x, y, x_low,
    x_high, y_low, y_high (CI bounds, NaN when unknown), valid and on_front. ``hypervolume`` is
    in x-unit times y-unit, against ``reference``; ``series_hypervolume`` per series.
    """

    x: Metric
    y: Metric
    points: pd.DataFrame
    reference: tuple[float, float]
    hypervolume: float
    series_by: str
    series_hypervolume: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def front(self) -> pd.DataFrame:
        """The Pareto-optimal rows, sorted by x."""
        return self.points[self.points["on_front"]].sort_values("x").reset_index(drop=True)

    def summary(self) -> str:
        """A few lines for a terminal: the front and the hypervolume."""
        lines = [
            f"Pareto front: {self.x.name} ({self.x.goal}) vs {self.y.name} ({self.y.goal}), "
            f"{len(self.front)} of {len(self.points)} points",
        ]
        for _, row in self.front.iterrows():
            lines.append(
                f"  {row['label']}: {self.x.name}={row['x']:.4g} {self.y.name}={row['y']:.4g}"
            )
        lines.append(
            f"hypervolume {self.hypervolume:.4g} against reference "
            f"({self.reference[0]:.4g}, {self.reference[1]:.4g})"
        )
        if self.skipped:
            lines.append(f"skipped (metric missing): {', '.join(self.skipped)}")
        return "\n".join(lines)


def precisions_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's precision (``fp32`` where the frame has no ``precision`` column or no value)."""
    if "precision" not in frame.columns:
        return pd.Series("fp32", index=frame.index, dtype=object)
    return frame["precision"].fillna("fp32").astype(str).replace("", "fp32")


def _series_of(frame: pd.DataFrame, series_by: str) -> pd.Series:
    if series_by not in SERIES_CHOICES:
        raise ConfigError(f"series {series_by!r} is not one of {', '.join(SERIES_CHOICES)}")
    if series_by == "device_runtime":
        return frame["device"].astype(str) + "/" + frame["runtime"].astype(str)
    if series_by == "precision":
        return precisions_of(frame)
    if series_by == "runtime_precision":
        return frame["runtime"].astype(str) + "/" + precisions_of(frame)
    return frame[series_by].astype(str)


def pareto_analysis(
    results: pd.DataFrame,
    x: str,
    y: str,
    *,
    x_goal: str | None = None,
    y_goal: str | None = None,
    series_by: str = "device_runtime",
    reference: Sequence[float] | None = None,
) -> ParetoResult:
    """The Pareto front of ``results`` over metrics ``x`` and ``y`` (names, see metrics.py).

    ``results`` should already be filtered (``usable_results``) and carry accuracy columns when an
    accuracy metric is used (``attach_accuracy``). The front is taken over all points; each series
    (device, runtime, both, precision, or runtime and precision) also gets its own hypervolume
    against the same reference.
    Raises ConfigError for unknown metrics or when no row has both metrics.
    """
    x_metric = resolve_metric(x, results, x_goal)
    y_metric = resolve_metric(y, results, y_goal)
    frame = pd.DataFrame(
        {
            "label": [key_label(row) for _, row in results.iterrows()],
            "model_id": results["model_id"].astype(str).to_numpy(),
            "device": results["device"].astype(str).to_numpy(),
            "runtime": results["runtime"].astype(str).to_numpy(),
            "precision": precisions_of(results).to_numpy(),
            "series": _series_of(results, series_by).to_numpy(),
            "x": x_metric.values(results).to_numpy(),
            "y": y_metric.values(results).to_numpy(),
            "valid": (results.get("validity", pd.Series("VALID", index=results.index)) == "VALID")
            .to_numpy(),
        }
    )
    for axis, metric in (("x", x_metric), ("y", y_metric)):
        interval = metric.interval(results)
        frame[f"{axis}_low"] = np.nan if interval is None else interval[0].to_numpy()
        frame[f"{axis}_high"] = np.nan if interval is None else interval[1].to_numpy()
    missing = frame[["x", "y"]].isna().any(axis=1)
    skipped = frame.loc[missing, "label"].tolist()
    frame = frame[~missing].reset_index(drop=True)
    if frame.empty:
        raise ConfigError(
            f"no result has both {x_metric.name} and {y_metric.name} "
            f"(missing for: {', '.join(skipped[:10])}); pick metrics these results have"
        )
    maximize = (x_metric.goal == "max", y_metric.goal == "max")
    xy = frame[["x", "y"]].to_numpy()
    frame["on_front"] = pareto_mask(xy, maximize)
    ref = tuple(float(v) for v in (reference or default_reference(xy, maximize)))
    if len(ref) != 2:
        raise ConfigError(f"reference point needs two values; got {len(ref)}")
    per_series = {
        name: hypervolume_2d(group[["x", "y"]].to_numpy(), ref, maximize)
        for name, group in frame.groupby("series", sort=True)
    }
    return ParetoResult(
        x=x_metric,
        y=y_metric,
        points=frame,
        reference=(ref[0], ref[1]),
        hypervolume=hypervolume_2d(xy, ref, maximize),
        series_by=series_by,
        series_hypervolume=per_series,
        skipped=skipped,
    )


LOG_SPAN = 10.0  # a metric whose largest value exceeds LOG_SPAN times its smallest gets a log axis


def wants_log(values: Any, span: float = LOG_SPAN) -> bool:
    """True when the finite ``values`` are all positive and span more than ``span`` times."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return len(finite) > 1 and bool((finite > 0).all()) and finite.max() / finite.min() > span


def point_labels(points: pd.DataFrame) -> list[str]:
    """A label per point: the model id, with its series added where the same model appears in
    more than one series (two runtimes of one model would otherwise print the same text), and its
    precision where one series holds the model at several precisions."""
    repeated = points.groupby("model_id")["series"].transform("nunique") > 1
    precision = points["precision"] if "precision" in points.columns else pd.Series("fp32", index=points.index)
    mixed = precision.groupby([points["model_id"], points["series"]]).transform("nunique") > 1
    labels = []
    for m, s, r, p, x in zip(points["model_id"], points["series"], repeated, precision, mixed):
        text = f"{m} ({s})" if r else str(m)
        labels.append(f"{text} {p}" if x else text)
    return labels


def pareto_figure(result: ParetoResult, *, label_points: bool = True) -> tuple[Any, list[Any]]:
    """The front as a matplotlib figure, and its point labels (matplotlib Text objects).

    One colour per series; front points are drawn large with a black edge and joined by a step
    line; INVALID results are hollow; error bars show the metrics' confidence intervals (latency
    CI). Each series' points are one SVG group with id ``pareto-points-<n>`` (one path each).
    An axis is logarithmic when its metric spans more than :data:`LOG_SPAN` times. Labels are
    placed by adjustText so that they overlap neither each other nor the points.
    """
    from costmeter.reports.plotting import new_figure, series_color

    figure, axes = new_figure()
    points = result.points
    for index, (series, group) in enumerate(points.groupby("series", sort=True)):
        color = series_color(index)
        xerr = _error_bars(group, "x")
        yerr = _error_bars(group, "y")
        if xerr is not None or yerr is not None:
            axes.errorbar(
                group["x"], group["y"], xerr=xerr, yerr=yerr, fmt="none", ecolor=color,
                alpha=0.6, elinewidth=1, capsize=2,
            )
        axes.scatter(
            group["x"], group["y"], s=np.where(group["on_front"], 70, 30),
            facecolors=[color if valid else "none" for valid in group["valid"]],
            edgecolors=["black" if front else color for front in group["on_front"]],
            linewidths=np.where(group["on_front"], 1.4, 1.0), label=series, zorder=3,
            gid=f"pareto-points-{index}",
        )
    front = result.front
    axes.step(
        front["x"], front["y"], where="post" if result.x.goal == "min" else "pre",
        color="black", linewidth=1, linestyle="--", label="Pareto front", zorder=2,
    )
    axes.set_xlabel(_axis_title(result.x))
    axes.set_ylabel(_axis_title(result.y))
    if wants_log(points["x"]):
        axes.set_xscale("log")
    if wants_log(points["y"]):
        axes.set_yscale("log")
    axes.set_title(
        f"{result.y.label} vs {result.x.label}: hypervolume {result.hypervolume:.4g}", fontsize=10
    )
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    texts = []
    if label_points and len(points):
        try:
            from adjustText import adjust_text
        except ImportError as err:
            raise UnavailableError(
                "placing Pareto labels needs adjustText; pip install 'costmeter[reports]'"
            ) from err

        low, high = axes.get_ylim()
        y = points["y"].to_numpy(dtype=float)
        if axes.get_yscale() == "log":  # stagger by a share of the decades shown
            starts = np.exp(_staggered(np.log(y), 0.02 * np.log(high / low)))
        else:
            starts = _staggered(y, 0.02 * (high - low))
        texts = [axes.text(x, y, text, fontsize=7, zorder=4)
                 for x, y, text in zip(points["x"], starts, point_labels(points))]
        _ensure_canvas(figure)
        figure.draw_without_rendering()  # settle the layout first: labels are placed in pixels
        figure.set_layout_engine("none")
        adjust_text(texts, x=points["x"].to_numpy(dtype=float),
                    y=points["y"].to_numpy(dtype=float), ax=axes,
                    arrowprops={"arrowstyle": "-", "color": "#777777", "lw": 0.5})
    return figure, texts


def _staggered(values: np.ndarray, step: float) -> np.ndarray:
    """Start positions for labels: points that share a value are spread by ``step`` around it
    (adjustText pushes overlapping labels apart along the line between their centres, so
    labels that start at exactly the same height would only ever be pushed sideways)."""
    out = values.copy()
    for value in np.unique(values[np.isfinite(values)]):
        tied = np.flatnonzero(values == value)
        out[tied] = value + (np.arange(len(tied)) - (len(tied) - 1) / 2) * step
    return out


def _ensure_canvas(figure: Any) -> None:
    """Give a pyplot-free figure an Agg canvas, so text can be measured before saving."""
    from matplotlib.backend_bases import FigureCanvasBase

    if type(figure.canvas) is FigureCanvasBase:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(figure)


def plot_pareto(result: ParetoResult, path: str | Path, *, label_points: bool = True) -> Path:
    """Draw the front (:func:`pareto_figure`) to ``path`` (.png, .svg or .pdf); returns it."""
    from costmeter.reports.plotting import plot_format, save_figure

    plot_format(path)
    figure, _ = pareto_figure(result, label_points=label_points)
    return save_figure(figure, path)


def _axis_title(metric: Metric) -> str:
    better = "lower" if metric.goal == "min" else "higher"
    return f"{metric.axis_label} [{better} is better]"


def _error_bars(group: pd.DataFrame, axis: str) -> np.ndarray | None:
    low, high, value = group[f"{axis}_low"], group[f"{axis}_high"], group[axis]
    if low.isna().all() or high.isna().all():
        return None
    below = (value - low).clip(lower=0).fillna(0).to_numpy()
    above = (high - value).clip(lower=0).fillna(0).to_numpy()
    return np.vstack([below, above])
