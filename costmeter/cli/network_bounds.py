"""The conformal interval or budget verdict `bench predict` prints for a kernel-level predictor."""
from __future__ import annotations

import math
from typing import Any


class NetworkBounds:
    """What ``bench predict --coverage/--budget-ms`` adds to a kernel-level answer: the
    conformal interval or the budget verdict, said in words when the calibration networks are
    too few for the level asked (an infinite bound)."""

    def __init__(self, conformal: Any, coverage: float | None, budget_ms: float | None,
                 confidence: float) -> None:
        self.conformal, self.coverage = conformal, coverage
        self.budget_ms, self.confidence = budget_ms, confidence

    def _too_few(self, level: float, two_sided: bool) -> str:
        from costmeter.predictors import conformal_min_rows

        return (f"{self.conformal.n_calibration_} calibration networks, a {level:.0%} "
                f"{'interval' if two_sided else 'bound'} needs at least "
                f"{conformal_min_rows(level, two_sided)}")

    def text(self, answer: dict[str, Any]) -> tuple[str, str]:
        """(what replaces ``± std``, a note for the end of the line)."""
        mean, scale = answer["latency_ms"], answer["kernel_std_ms"]
        shown, note = f"± {answer['std_ms']:.2g}", ""
        if self.coverage is not None:
            low, high = (float(v[0]) for v in self.conformal.interval([mean], [scale], self.coverage))
            shown = (f"[{low:.4g}, {high:.4g}] ({self.coverage:.0%} interval)" if math.isfinite(high)
                     else f"(no finite {self.coverage:.0%} interval: "
                          f"{self._too_few(self.coverage, True)})")
        if self.budget_ms is not None:
            upper = float(self.conformal.upper([mean], [scale], self.confidence)[0])
            verdict = ("yes" if upper <= self.budget_ms else "no") if math.isfinite(upper) else \
                f"unknown ({self._too_few(self.confidence, False)})"
            note = f"; within {self.budget_ms:g} ms at {self.confidence:.0%}: {verdict}"
        return shown, note
