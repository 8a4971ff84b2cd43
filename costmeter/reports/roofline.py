"""Roofline placement: how close each model (or kernel) runs to this machine's bounds.

Given a machine's peak compute (FLOP/s) and memory bandwidth (bytes/s), from
:mod:`costmeter.reports.calibrate`, and per item its FLOPs, bytes moved and latency:

- arithmetic intensity = FLOPs / bytes (FLOP/byte); ridge point = peak / bandwidth;
- attainable FLOP/s = min(peak, intensity x bandwidth); the item is *memory-bound* when its
  intensity is below the ridge point, else *compute-bound*;
- achieved FLOP/s = FLOPs / latency; share of peak = achieved / peak; share of bound =
  achieved / attainable.

A roofline can't be beaten: an item above 100% of the peak (or of its bound) says the calibration
is wrong (timed with a slower library or fewer threads than the runs), not that the item is fast.
Such shares are flagged (``calibration_error``) and never printed as results.

Model-level inputs come from stored results (FLOPs = 2 x MACs per item x batch; bytes =
``param_bytes``, the weights read once per call: a lower bound on traffic, so the intensity is an
upper bound). Kernel-level inputs come from the cost model's per-kernel breakdown.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError
from costmeter.reports.metrics import key_label

ITEM_COLUMNS = ("name", "flops", "bytes", "latency_s")


def ridge_point(peak_flops_per_s: float, bandwidth_bytes_per_s: float) -> float:
    """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
    _check_machine(peak_flops_per_s, bandwidth_bytes_per_s)
    return peak_flops_per_s / bandwidth_bytes_per_s


def attainable_flops(intensity: Any, peak_flops_per_s: float, bandwidth_bytes_per_s: float):
    """Roofline bound in FLOP/s at ``intensity`` (FLOP/byte; scalar or array)."""
    _check_machine(peak_flops_per_s, bandwidth_bytes_per_s)
    return np.minimum(peak_flops_per_s, np.asarray(intensity, dtype=float) * bandwidth_bytes_per_s)


def _check_machine(peak: float, bandwidth: float) -> None:
    if not (peak > 0 and bandwidth > 0):
        raise ConfigError(
            f"peak FLOP/s ({peak}) and bandwidth ({bandwidth} B/s) must be positive; "
            "run `bench calibrate` again"
        )


def roofline_table(items: pd.DataFrame, peak_flops_per_s: float,
                   bandwidth_bytes_per_s: float) -> pd.DataFrame:
    """Place each item (columns name, flops, bytes, latency_s) against the roofline.

    Adds: intensity_flop_per_byte, attainable_flops_per_s, achieved_flops_per_s, share_of_peak,
    share_of_bound (fractions), bound ('compute' or 'memory') and min_latency_s (the roofline's
    lower bound on the time: max(flops / peak, bytes / bandwidth)). Rows missing a figure are
    dropped.
    """
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ConfigError(f"roofline items lack column(s) {', '.join(missing)}")
    ridge = ridge_point(peak_flops_per_s, bandwidth_bytes_per_s)
    table = items.copy()
    for column in ("flops", "bytes", "latency_s"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table = table[(table["flops"] > 0) & (table["bytes"] > 0) & (table["latency_s"] > 0)].copy()
    table["intensity_flop_per_byte"] = table["flops"] / table["bytes"]
    table["attainable_flops_per_s"] = attainable_flops(
        table["intensity_flop_per_byte"], peak_flops_per_s, bandwidth_bytes_per_s
    )
    table["achieved_flops_per_s"] = table["flops"] / table["latency_s"]
    table["share_of_peak"] = table["achieved_flops_per_s"] / peak_flops_per_s
    table["share_of_bound"] = table["achieved_flops_per_s"] / table["attainable_flops_per_s"]
    table["bound"] = np.where(table["intensity_flop_per_byte"] >= ridge, "compute", "memory")
    table["min_latency_s"] = np.maximum(
        table["flops"] / peak_flops_per_s, table["bytes"] / bandwidth_bytes_per_s
    )
    table["calibration_error"] = (table["share_of_peak"] > 1.0) | (table["share_of_bound"] > 1.0)
    return table.reset_index(drop=True)


def calibration_error_note(table: pd.DataFrame, calibration: dict[str, Any] | None = None) -> str:
    """A paragraph naming the items that beat the roofline (empty when none): the calibration
    is wrong for them, with what to do."""
    if "calibration_error" not in table.columns or not table["calibration_error"].any():
        return ""
    bad = table[table["calibration_error"]]
    worst = float(np.maximum(bad["share_of_peak"], bad["share_of_bound"]).max())
    how = ""
    if calibration:
        how = (f" (peak from {calibration.get('peak_backend') or calibration.get('backend')}, "
               f"threads {calibration.get('threads') or 'default'})")
    return (f"calibration error: {len(bad)} item(s) ran faster than the calibrated roofline{how}, "
            f"up to {worst:.0%} of it ({', '.join(map(str, bad['name'].head(3)))}); their shares are "
            "not results. Run `bench calibrate` again at the runs' thread count with every GEMM "
            "backend installed.\n")


def _share(value: float) -> str:
    return "calib. error" if value > 1.0 else f"{value * 100:.1f}%"


def model_items(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Roofline items from stored results, and the labels skipped for lack of MACs, weights
    or latency. FLOPs per call = 2 x macs (per item) x batch; bytes = param_bytes; latency =
    latency p50."""
    frame = pd.DataFrame(
        {
            "name": [key_label(row) for _, row in results.iterrows()],
            "model_id": results["model_id"].astype(str).to_numpy(),
            "device": results["device"].astype(str).to_numpy(),
            "runtime": results["runtime"].astype(str).to_numpy(),
            "flops": 2.0 * pd.to_numeric(results["macs"], errors="coerce").to_numpy()
            * pd.to_numeric(results["batch"], errors="coerce").to_numpy(),
            "bytes": pd.to_numeric(results["param_bytes"], errors="coerce").to_numpy(),
            "latency_s": pd.to_numeric(results["latency_p50_ms"], errors="coerce").to_numpy()
            / 1e3,
        }
    )
    usable = (frame[["flops", "bytes", "latency_s"]] > 0).all(axis=1)
    return frame[usable].reset_index(drop=True), frame.loc[~usable, "name"].tolist()


def kernel_items(breakdown: pd.DataFrame, latency_column: str = "latency_ms") -> pd.DataFrame:
    """Roofline items from a per-kernel breakdown with columns ``kernel`` (or ``name``),
    ``flops``, ``bytes_read``, ``bytes_written`` (or ``bytes``) and a latency in ms."""
    name = breakdown["kernel"] if "kernel" in breakdown.columns else breakdown.get("name")
    if name is None or latency_column not in breakdown.columns or "flops" not in breakdown.columns:
        raise ConfigError(
            f"kernel breakdown needs kernel, flops, bytes_read/bytes_written and {latency_column};"
            f" has {', '.join(map(str, breakdown.columns))}"
        )
    if "bytes" in breakdown.columns:
        moved = pd.to_numeric(breakdown["bytes"], errors="coerce")
    else:
        moved = pd.to_numeric(breakdown["bytes_read"], errors="coerce") + pd.to_numeric(
            breakdown["bytes_written"], errors="coerce"
        )
    return pd.DataFrame(
        {
            "name": name.astype(str).to_numpy(),
            "flops": pd.to_numeric(breakdown["flops"], errors="coerce").to_numpy(),
            "bytes": moved.to_numpy(),
            "latency_s": pd.to_numeric(breakdown[latency_column], errors="coerce").to_numpy()
            / 1e3,
        }
    )


def render_markdown(table: pd.DataFrame, peak_flops_per_s: float,
                    bandwidth_bytes_per_s: float, calibration: dict[str, Any] | None = None) -> str:
    """The roofline table in Markdown, with the machine's figures on top (and the theoretical
    peak beside the measured one when the calibration has it); shares above 100% read
    "calib. error" and are explained below the table."""
    from costmeter.reports import formatting as fmt

    header = ["Item", "FLOPs", "Bytes", "Intensity FLOP/B", "Achieved FLOP/s",
              "Attainable FLOP/s", "Share of peak", "Share of bound", "Bound"]
    rows = [
        [str(r["name"]), fmt.count(r["flops"]), fmt.size_bytes(r["bytes"]),
         fmt.significant(r["intensity_flop_per_byte"]), fmt.count(r["achieved_flops_per_s"]),
         fmt.count(r["attainable_flops_per_s"]), _share(r["share_of_peak"]),
         _share(r["share_of_bound"]), str(r["bound"])]
        for _, r in table.iterrows()
    ]
    ridge = ridge_point(peak_flops_per_s, bandwidth_bytes_per_s)
    head = (
        f"Peak {fmt.count(peak_flops_per_s)}FLOP/s, bandwidth "
        f"{fmt.size_bytes(bandwidth_bytes_per_s)}/s, ridge point {fmt.significant(ridge)} "
        "FLOP/byte.\n"
    )
    theoretical = (calibration or {}).get("theoretical") or {}
    if theoretical.get("flops_per_s"):
        head += (f"Theoretical peak {fmt.count(theoretical['flops_per_s'])}FLOP/s (measured = "
                 f"{peak_flops_per_s / theoretical['flops_per_s']:.0%} of it): {theoretical.get('describe', '')}\n")
    body = fmt.markdown_table(header, rows, ["l"] + ["r"] * 7 + ["l"]) + "\n"
    return head + "\n" + body + calibration_error_note(table, calibration)


def plot_roofline(table: pd.DataFrame, peak_flops_per_s: float, bandwidth_bytes_per_s: float,
                  path: str | Path, *, label_points: bool = True) -> Path:
    """Log-log roofline (the two roofs, the ridge) with each item at (intensity, achieved)."""
    from costmeter.reports.plotting import new_figure, plot_format, save_figure, series_color

    plot_format(path)
    if table.empty:
        raise ConfigError("nothing to place on the roofline (no item has FLOPs, bytes and latency)")
    ridge = ridge_point(peak_flops_per_s, bandwidth_bytes_per_s)
    intensities = table["intensity_flop_per_byte"].to_numpy()
    lo = min(intensities.min(), ridge) / 10
    hi = max(intensities.max(), ridge) * 10
    grid = np.geomspace(lo, hi, 200)
    figure, axes = new_figure(6.5, 4.5)
    axes.plot(grid, attainable_flops(grid, peak_flops_per_s, bandwidth_bytes_per_s),
              color="black", linewidth=1.5, label="roofline")
    axes.axvline(ridge, color="grey", linestyle=":", linewidth=1,
                 label=f"ridge {ridge:.3g} FLOP/B")
    for index, (bound, group) in enumerate(table.groupby("bound", sort=True)):
        axes.scatter(group["intensity_flop_per_byte"], group["achieved_flops_per_s"], s=25,
                     color=series_color(index), label=f"{bound}-bound", zorder=3,
                     gid=f"roofline-points-{index}")
        if label_points:
            for _, row in group.iterrows():
                axes.annotate(str(row["name"]).split("/")[0],
                              (row["intensity_flop_per_byte"], row["achieved_flops_per_s"]),
                              fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("arithmetic intensity (FLOP/byte)")
    axes.set_ylabel("FLOP/s")
    axes.set_title(
        f"Roofline: peak {peak_flops_per_s:.3g} FLOP/s, {bandwidth_bytes_per_s:.3g} B/s",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.2)
    axes.legend(fontsize=7, loc="lower right")
    return save_figure(figure, path)
