"""Accuracy of latency predictors: metrics, splits, and grouped evaluation.

Metrics (all from measured and predicted latencies in ms, measured > 0):
``rmse_ms``, ``mae_ms``, ``mape_pct`` (mean |pred/true - 1| in %), ``bias_pct`` (median of
pred/true - 1 in %), ``within_5_pct``/``within_10_pct``/``within_15_pct`` (share of
predictions within +-5/10/15 % of the measurement, in %), ``spearman`` (rank correlation rho)
and ``kendall`` (tau-b), both from scipy.

Budgets: :func:`budget_summary` says whether networks returned as within a latency budget
measured within it, and how close their measurements came to the predictions.

Splits: :func:`random_split` (by count or fraction, seeded) and :func:`family_split` (hold out
whole model families, e.g. train on ResNet/MobileNetV2, test on MobileNetV3/EfficientNet).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from costmeter.errors import ConfigError

TOLERANCES_PCT: tuple[int, ...] = (5, 10, 15)
METRIC_NAMES: tuple[str, ...] = (
    "n", "rmse_ms", "mae_ms", "mape_pct", "bias_pct",
    *[f"within_{t}_pct" for t in TOLERANCES_PCT], "spearman", "kendall",
)


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ConfigError(f"{t.size} measured latencies but {p.size} predictions")
    bad = np.flatnonzero(~(t > 0) | ~np.isfinite(t))
    if bad.size:
        rows = ", ".join(str(int(i)) for i in bad[:5])
        raise ConfigError(f"{bad.size} measured latencies are not positive finite numbers "
                          f"(rows {rows}{'...' if bad.size > 5 else ''}); filter them first")
    if not np.all(np.isfinite(p)):
        raise ConfigError("predictions contain NaN or infinity")
    return t, p


def metrics(y_true_ms: Any, y_pred_ms: Any) -> dict[str, float]:
    """All :data:`METRIC_NAMES` for one set of measured and predicted latencies (ms)."""
    from scipy.stats import kendalltau, spearmanr

    t, p = _pair(y_true_ms, y_pred_ms)
    out: dict[str, float] = {"n": float(t.size)}
    if t.size == 0:
        return {name: (0.0 if name == "n" else float("nan")) for name in METRIC_NAMES}
    rel = p / t - 1.0
    out["rmse_ms"] = float(np.sqrt(np.mean((p - t) ** 2)))
    out["mae_ms"] = float(np.mean(np.abs(p - t)))
    out["mape_pct"] = float(np.mean(np.abs(rel)) * 100)
    out["bias_pct"] = float(np.median(rel) * 100)
    for tol in TOLERANCES_PCT:
        # a small epsilon so that exactly +-tol% (e.g. 11/10) counts as within
        out[f"within_{tol}_pct"] = float(np.mean(np.abs(rel) <= tol / 100 + 1e-12) * 100)
    constant = t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0
    out["spearman"] = float("nan") if constant else float(spearmanr(t, p)[0])
    out["kendall"] = float("nan") if constant else float(kendalltau(t, p)[0])
    return out


def metrics_table(y_true_ms: Any, y_pred_ms: Any, groups: Sequence[str] | None = None,
                  overall_label: str = "overall") -> Any:
    """DataFrame of :func:`metrics`: one ``overall`` row, then one row per group (sorted)."""
    import pandas as pd

    t, p = _pair(y_true_ms, y_pred_ms)
    rows = {overall_label: metrics(t, p)}
    if groups is not None:
        g = np.asarray(groups, dtype=object)
        if g.size != t.size:
            raise ConfigError(f"{g.size} group labels for {t.size} latencies")
        for label in sorted(set(g.tolist()), key=str):
            mask = g == label
            rows[str(label)] = metrics(t[mask], p[mask])
    frame = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_NAMES)]
    frame["n"] = frame["n"].astype("int64")
    frame.index.name = "group"
    return frame


def family_of(model_id: str) -> str:
    """Model family of a model id: the space of ``space:arch`` ids, else the name without size
    suffixes and trailing depth digits (``resnet50`` -> ``resnet``, ``mobilenet_v3_large`` ->
    ``mobilenet_v3``, ``efficientnet_b0`` -> ``efficientnet``)."""
    if ":" in model_id:
        return model_id.split(":", 1)[0]
    base = model_id.rsplit("/", 1)[-1]
    base = re.sub(r"\.onnx$", "", base)
    base = re.sub(r"_(small|large|tiny|base|mini|nano|xl|xs|s|m|l)$", "", base)
    base = re.sub(r"_b\d+$", "", base)
    base = re.sub(r"(?<=[a-z][a-z])\d+$", "", base)
    return base


def random_split(n: int, train: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) of ``n`` rows; ``train`` is a count (int) or a fraction."""
    n_train = int(train) if isinstance(train, (int, np.integer)) and not isinstance(train, bool) \
        else round(float(train) * n)
    if not 0 < n_train < n:
        raise ConfigError(f"training size {train} leaves no training or no test rows out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def family_split(families: Sequence[str], held_out: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): rows whose family is in ``held_out`` form the test set."""
    fam = np.asarray(families, dtype=object)
    known = sorted(set(fam.tolist()), key=str)
    unknown = [h for h in held_out if h not in known]
    if unknown:
        raise ConfigError(f"held-out families {unknown} not in the data; families present: "
                          f"{', '.join(map(str, known))}")
    test = np.isin(fam, list(held_out))
    if test.all() or not test.any():
        raise ConfigError("held-out families must leave both training and test rows")
    return np.flatnonzero(~test), np.flatnonzero(test)


def evaluate_split(make_estimator: Callable[[], Any], X: Any, y_ms: Any,
                   train_idx: np.ndarray, test_idx: np.ndarray,
                   groups: Sequence[str] | None = None) -> Any:
    """Fit a fresh estimator on the training rows, return :func:`metrics_table` on the test rows.

    ``X`` is a DataFrame (or array) of features, ``y_ms`` latencies; ``groups`` (optional)
    labels rows for per-group metrics (for example :func:`family_of` of the model ids).
    """
    y = np.asarray(y_ms, dtype=np.float64)
    take = (lambda idx: X.iloc[idx]) if hasattr(X, "iloc") else (lambda idx: np.asarray(X)[idx])
    est = make_estimator().fit(take(train_idx), y[train_idx])
    pred = est.predict(take(test_idx))
    g = None if groups is None else np.asarray(groups, dtype=object)[test_idx]
    return metrics_table(y[test_idx], np.asarray(pred, dtype=np.float64), g)


def evaluate_predictor(predictor: Any, frame: Any, statistic: str = "latency_p50_ms") -> Any:
    """Score a fitted ArchPredictor on stored results (a ``ResultStore.query()`` frame):
    :func:`metrics_table` on the ok results of the predictor's space, device and runtime
    (what ``bench predictor eval MODEL`` reports)."""
    from costmeter.results.traces import training_frame

    test = training_frame(frame, predictor.space, device=predictor.device,
                          runtime=predictor.runtime, statistic=statistic)
    pred = predictor.predict(list(test["arch"]))
    return metrics_table(test["latency_ms"].to_numpy(), pred)


# ----------------------------------------------------------------------------- budgets
def budget_summary(measured_ms: Any, predicted_ms: Any, budget_ms: float) -> dict[str, float]:
    """Did the budget hold? Over the networks measured (NaN left out): ``n``, the share measured
    within ``budget_ms`` (%), the share whose measured median is within ±10 % of the prediction
    (%), the bias (median of predicted / measured - 1, %), MAPE (%) and Spearman's rho."""
    measured = np.asarray(measured_ms, dtype=np.float64)
    predicted = np.asarray(predicted_ms, dtype=np.float64)
    ok = np.isfinite(measured) & np.isfinite(predicted)
    if not ok.any():
        return {"n": 0, "within_budget_pct": float("nan"), "within_10_pct": float("nan"),
                "bias_pct": float("nan"), "mape_pct": float("nan"), "spearman": float("nan")}
    m = metrics(measured[ok], predicted[ok])
    return {"n": int(ok.sum()), "within_budget_pct": float(np.mean(measured[ok] <= budget_ms) * 100),
            "within_10_pct": m["within_10_pct"], "bias_pct": m["bias_pct"],
            "mape_pct": m["mape_pct"], "spearman": m["spearman"]}


def summary_lines(summary: dict[str, float], budget_ms: float, confidence: float) -> list[str]:
    """The printed verdict: both target figures with their targets, then bias and rank."""
    if not summary["n"]:
        return ["no returned network could be measured"]
    return [f"of {summary['n']} networks returned as within {budget_ms:.3g} ms at {confidence:.0%} "
            f"confidence: {summary['within_budget_pct']:.0f} % measured within the budget (target "
            f">= {confidence:.0%}), {summary['within_10_pct']:.0f} % measured within ±10 % of "
            "the prediction (target >= 80 %)",
            f"predicted vs measured median: bias {summary['bias_pct']:+.1f} %, MAPE "
            f"{summary['mape_pct']:.1f} %, Spearman {summary['spearman']:.2f}"]
