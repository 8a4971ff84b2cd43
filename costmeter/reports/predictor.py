"""Predictor report: how close the cost model's predictions are to measured latencies.

Input: a frame with columns ``model_id``, ``family``, ``measured_ms``, ``predicted_ms`` (the
output of ``bench predictor eval``, CSV/JSON/Parquet). Pure part: :func:`prediction_errors`,
:func:`family_table`; rendering: scatter with the ±band, error histogram, Markdown table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports import formatting as fmt

REQUIRED_COLUMNS = ("model_id", "family", "measured_ms", "predicted_ms")
DEFAULT_BAND = 0.10
ALL_FAMILIES = "all"


def load_predictions(path: str | Path) -> pd.DataFrame:
    """Read predictions from .csv, .json (records or lines) or .parquet; checked for columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"predictions file {str(path)!r} does not exist; run `bench predictor eval` first"
        )
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json", ".jsonl", ".parquet"):
        raise ConfigError(f"predictions file {str(path)!r}: use .csv, .json or .parquet")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            text = path.read_text(encoding="utf-8").lstrip()
            frame = pd.read_json(path, lines=not text.startswith("["))
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ConfigError(f"predictions file {str(path)!r} cannot be read ({err})") from err
    return validate_predictions(frame)


def validate_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with numeric latencies; ConfigError naming missing columns or bad rows."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"predictions lack column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}"
        )
    if frame.empty:
        raise ConfigError("predictions are empty; run `bench predictor eval` on some models")
    out = frame.copy()
    for column in ("measured_ms", "predicted_ms"):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    bad = out[~(out["measured_ms"] > 0) | out["predicted_ms"].isna()]
    if len(bad):
        raise ConfigError(
            f"predictions need a positive measured_ms and a number in predicted_ms; bad rows for "
            f"{', '.join(map(str, bad['model_id'].head(10)))}"
        )
    out["family"] = out["family"].fillna("unknown").astype(str)
    return out


def prediction_errors(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``error`` = predicted / measured - 1 and ``abs_error`` (fractions)."""
    out = validate_predictions(frame)
    out["error"] = out["predicted_ms"] / out["measured_ms"] - 1
    out["abs_error"] = out["error"].abs()
    return out


def _summary(errors: pd.Series, band: float) -> dict[str, float]:
    values = errors.to_numpy(dtype=float)
    return {
        "n": int(len(values)),
        "mape_pct": float(np.mean(np.abs(values)) * 100),
        "median_ape_pct": float(np.median(np.abs(values)) * 100),
        "rmspe_pct": float(np.sqrt(np.mean(values**2)) * 100),
        "max_ape_pct": float(np.max(np.abs(values)) * 100),
        "bias_pct": float(np.median(values) * 100),
        "within_band_pct": float(np.mean(np.abs(values) <= band + 1e-12) * 100),
    }


def family_table(frame: pd.DataFrame, band: float = DEFAULT_BAND) -> pd.DataFrame:
    """Error statistics per family plus an ``all`` row (percent): n, MAPE, median APE, RMSPE,
    max APE, bias (median signed error; positive = over-predicts) and share within ±band."""
    errors = prediction_errors(frame)
    rows = [{"family": family, **_summary(group["error"], band)}
            for family, group in errors.groupby("family", sort=True)]
    rows.append({"family": ALL_FAMILIES, **_summary(errors["error"], band)})
    return pd.DataFrame(rows)


def render_markdown(table: pd.DataFrame, band: float = DEFAULT_BAND) -> str:
    """The family table as a Markdown pipe table."""
    header = ["Family", "n", "MAPE %", "Median APE %", "RMSPE %", "Max APE %", "Bias %",
              f"Within ±{band * 100:g}% (%)"]
    rows = [
        [str(r["family"]), str(int(r["n"])), f"{r['mape_pct']:.1f}", f"{r['median_ape_pct']:.1f}",
         f"{r['rmspe_pct']:.1f}", f"{r['max_ape_pct']:.1f}", f"{r['bias_pct']:+.1f}",
         f"{r['within_band_pct']:.0f}"]
        for _, r in table.iterrows()
    ]
    return fmt.markdown_table(header, rows, ["l"] + ["r"] * 7) + "\n"


def plot_predicted_vs_measured(frame: pd.DataFrame, path: str | Path,
                               band: float = DEFAULT_BAND) -> Path:
    """Log-log scatter of predicted vs measured latency (one colour per family), the identity
    line and the ±band shaded. Each family's points are an SVG group ``predictor-points-<n>``."""
    from costmeter.reports.plotting import new_figure, plot_format, save_figure, series_color

    plot_format(path)
    errors = prediction_errors(frame)
    figure, axes = new_figure(5.5, 5.0)
    positive = errors[errors["predicted_ms"] > 0]
    values = np.concatenate([positive["measured_ms"], positive["predicted_ms"]])
    lo, hi = float(values.min()) / 1.3, float(values.max()) * 1.3
    line = np.geomspace(lo, hi, 50)
    axes.fill_between(line, line * (1 - band), line * (1 + band), color="#cccccc", alpha=0.5,
                      label=f"±{band * 100:g}%")
    axes.plot(line, line, color="black", linewidth=0.8, label="predicted = measured")
    for index, (family, group) in enumerate(positive.groupby("family", sort=True)):
        axes.scatter(group["measured_ms"], group["predicted_ms"], s=18, color=series_color(index),
                     label=family, gid=f"predictor-points-{index}", zorder=3)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(lo, hi)
    axes.set_ylim(lo, hi)
    axes.set_xlabel("measured latency (ms)")
    axes.set_ylabel("predicted latency (ms)")
    within = float(np.mean(errors["abs_error"] <= band + 1e-12) * 100)
    axes.set_title(
        f"{within:.0f}% of {len(errors)} predictions within ±{band * 100:g}%", fontsize=10
    )
    axes.legend(fontsize=7, loc="upper left")
    axes.grid(True, which="both", alpha=0.2)
    return save_figure(figure, path)


def plot_error_histogram(frame: pd.DataFrame, path: str | Path,
                         band: float = DEFAULT_BAND, bins: int = 30) -> Path:
    """Histogram of the signed relative errors (%), stacked per family, band edges marked."""
    from costmeter.reports.plotting import new_figure, plot_format, save_figure, series_color

    plot_format(path)
    errors = prediction_errors(frame)
    figure, axes = new_figure(6.0, 3.5)
    groups = list(errors.groupby("family", sort=True))
    axes.hist([g["error"] * 100 for _, g in groups], bins=bins, stacked=True,
              color=[series_color(i) for i in range(len(groups))], label=[f for f, _ in groups])
    for edge in (-band * 100, band * 100):
        axes.axvline(edge, color="black", linestyle="--", linewidth=0.8)
    axes.set_xlabel("prediction error (%) = predicted / measured - 1")
    axes.set_ylabel("models")
    axes.legend(fontsize=7)
    axes.grid(True, alpha=0.3)
    return save_figure(figure, path)


def write_predictor_report(frame: pd.DataFrame, out_dir: str | Path, *,
                           band: float = DEFAULT_BAND, image_format: str = "png") -> dict[str, Any]:
    """Write ``predictor_scatter.<fmt>``, ``predictor_errors.<fmt>``, ``predictor_families.md``
    and ``.csv`` into ``out_dir``; returns the paths and the family table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = family_table(frame, band)
    paths = {
        "scatter": plot_predicted_vs_measured(
            frame, out / f"predictor_scatter.{image_format}", band
        ),
        "histogram": plot_error_histogram(frame, out / f"predictor_errors.{image_format}", band),
        "markdown": out / "predictor_families.md",
        "csv": out / "predictor_families.csv",
    }
    paths["markdown"].write_text(render_markdown(table, band), encoding="utf-8")
    paths["csv"].write_text(table.to_csv(index=False, lineterminator="\n"), encoding="utf-8")
    return {"paths": paths, "table": table}
