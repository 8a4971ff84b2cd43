"""A cheap nightly subset: which benchmarks preserve the full suite's rankings and regressions.

Terms. A *key* is one benchmark (model x runtime x device x batch x ...). Its *contestant* is
what the suite ranks (by default the device/runtime pair; ``rank_by`` picks other key fields,
e.g. ``model_id``), its *item* is the rest of the key (model, batch, threads, options). A
*night* is one run of the suite (or one date).

What is chosen: whole items, each run on every contestant that has it. Cutting a suite by
items (dropping models) keeps the ranking comparison like for like: every contestant is scored
on the same items. A contestant's score on a night is the mean, over the chosen items it has, of
``log p50 - mean log p50 of that item over its contestants`` (so fast and slow models weigh the
same, and an item a contestant lacks does not bias it); contestants are ranked by that score.

How well a subset does, on a set of nights:

- ``tau``: Kendall's tau (``scipy.stats.kendalltau``, tau-b) between the contestants' ranking
  by the subset and by the full suite, per night, averaged over the nights;
- ``recall``: the share of *alarm nights* (nights on which the full suite found at least one
  regressed key) on which the subset finds one too, i.e. would have raised the alarm. Two
  unrelated regressions on one night count as one alarm. ``key_recall`` is the share of
  regressed (key, night) pairs that the subset runs.

How it is chosen (:func:`choose_subset`): greedy, on the earlier nights only. Start empty; add
the affordable item with the largest gain per cost of ``weight * recall + (1 - weight) * tau``
(recall over the earlier nights' alarms, tau averaged over up to ``objective_nights`` of them);
stop when no item fits the budget. Recall is a coverage function, for which greedy selection is
the classic near-optimal heuristic; tau is not, but greedy keeps the search to
``items x steps`` evaluations and needs no tuning beyond ``weight``. The figures reported are
computed on the later (held-out) nights, for the subset chosen on the earlier ones, next to
random subsets of the same budget scored on the same nights. The subset to run from now on is
chosen the same way on all nights (``SubsetReport.keys``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from costmeter.errors import ConfigError

BUDGET_KINDS = ("keys", "time")
MIN_NIGHTS = 6


@dataclass(frozen=True)
class SuiteHistory:
    """A suite's history as the subset chooser reads it.

    ``p50_ms``: nights (index, oldest first) x keys (columns), the key's p50 that night in ms,
    NaN where it has no good result. ``regressed``: same index and columns, True where the key
    regressed (got slower) that night. ``keys``: indexed by the same key ids, with columns
    ``label``, ``contestant``, ``item`` and ``cost_s`` (seconds one night of the key costs).
    """

    p50_ms: pd.DataFrame
    regressed: pd.DataFrame
    keys: pd.DataFrame

    def __post_init__(self) -> None:
        missing = {"label", "contestant", "item", "cost_s"} - set(self.keys.columns)
        if missing:
            raise ConfigError(f"history keys lack column(s) {', '.join(sorted(missing))}")
        if list(self.p50_ms.columns) != list(self.keys.index):
            raise ConfigError("history p50_ms columns must be the keys' index, in order")
        if (self.regressed.shape != self.p50_ms.shape
                or list(self.regressed.index) != list(self.p50_ms.index)
                or list(self.regressed.columns) != list(self.p50_ms.columns)):
            raise ConfigError("history regressed must have p50_ms's nights and keys")
        if self.keys["contestant"].nunique() < 2:
            raise ConfigError(
                "the history holds one contestant only; a ranking needs at least two "
                "(pick --rank-by fields that vary across the suite, e.g. runtime)"
            )


@dataclass
class SubsetScore:
    """How one subset did on a set of nights (see the module doc)."""

    nights: int
    tau: float
    tau_per_night: list[float] = field(repr=False)
    alarms: int
    caught: int
    recall: float
    key_regressions: int
    key_caught: int
    key_recall: float


@dataclass
class RandomBaseline:
    """Random subsets of the same budget, scored on the held-out nights: means over ``draws``,
    and the share of draws whose tau / recall the chosen subset matches or beats."""

    draws: int
    tau: float
    recall: float
    beaten_tau: float
    beaten_recall: float


@dataclass
class SubsetReport:
    """The chosen subset and how well the method preserves the full suite.

    ``keys``/``items``: the subset to run from now on (chosen on all nights). ``cost_share``:
    its share of the suite's keys and of its measuring time. ``evaluated_items``: the subset
    chosen on the earlier ``train_nights``; ``held_out`` scores it on the later
    ``test_nights``, ``train`` on the earlier ones, ``random`` gives random subsets of the same
    budget on the held-out nights.
    """

    keys: list[str]
    labels: list[str]
    items: list[str]
    budget: float
    budget_by: str
    cost_share: dict[str, float]
    evaluated_items: list[str]
    train_nights: list[str]
    test_nights: list[str]
    held_out: SubsetScore
    train: SubsetScore
    random: RandomBaseline | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(asdict(self))

    def summary(self) -> str:
        """A few lines for a terminal."""
        h, r = self.held_out, self.random
        lines = [
            f"subset: {len(self.items)} items, {len(self.keys)} keys "
            f"({self.cost_share['keys'] * 100:.1f}% of keys, "
            f"{self.cost_share['time'] * 100:.1f}% of measuring time; budget "
            f"{self.budget * 100:g}% of {self.budget_by})",
            f"held out: chosen on {len(self.train_nights)} earlier nights, scored on "
            f"{len(self.test_nights)} later ones",
            f"  Kendall tau vs the full suite's ranking: {_num(h.tau)} (mean over "
            f"{h.nights} nights)",
            f"  alarms caught: {h.caught} of {h.alarms} nights ({_pct(h.recall)}); regressed "
            f"keys run: {h.key_caught} of {h.key_regressions} ({_pct(h.key_recall)})",
        ]
        if r is not None:
            lines.append(
                f"  random subsets of the same budget ({r.draws} draws): tau {_num(r.tau)}, "
                f"alarms caught {_pct(r.recall)}; the chosen subset matches or beats "
                f"{_pct(r.beaten_tau)} of them on tau, {_pct(r.beaten_recall)} on alarms"
            )
        lines.append("items: " + ", ".join(self.items))
        return "\n".join(lines)


def _num(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value * 100:.0f}%"


class _Suite:
    """The history in arrays: per (night, item, contestant) sums of relative log p50."""

    def __init__(self, history: SuiteHistory) -> None:
        keys = history.keys
        self.items = sorted(keys["item"].astype(str).unique())
        self.contestants = sorted(keys["contestant"].astype(str).unique())
        item_of = keys["item"].astype(str).map({v: i for i, v in enumerate(self.items)}).to_numpy()
        cont_of = keys["contestant"].astype(str).map(
            {v: c for c, v in enumerate(self.contestants)}).to_numpy()
        values = history.p50_ms.to_numpy(dtype=float)
        logs = np.log(np.where(values > 0, values, np.nan))
        n_nights = len(values)
        centre = np.full((n_nights, len(self.items)), np.nan)
        for i in range(len(self.items)):
            with np.errstate(invalid="ignore"):
                cols = logs[:, item_of == i]
                counts = np.isfinite(cols).sum(axis=1)
                centre[:, i] = np.where(counts > 0, np.nansum(cols, axis=1) / np.maximum(counts, 1),
                                        np.nan)
        relative = logs - centre[:, item_of]
        shape = (n_nights, len(self.items), len(self.contestants))
        self.sums, self.counts = np.zeros(shape), np.zeros(shape)
        finite = np.isfinite(relative)
        for k in range(len(keys)):
            self.sums[:, item_of[k], cont_of[k]] += np.where(finite[:, k], relative[:, k], 0.0)
            self.counts[:, item_of[k], cont_of[k]] += finite[:, k]
        self.item_of = item_of
        self.regressed = history.regressed.to_numpy(dtype=bool)
        self.key_ids = list(keys.index)
        self.labels = keys["label"].astype(str).tolist()
        self.key_cost = keys["cost_s"].to_numpy(dtype=float)
        self.full = self.scores(np.arange(len(self.items)))

    def scores(self, items: Sequence[int]) -> np.ndarray:
        """nights x contestants: mean relative log p50 over ``items`` (0 = no information)."""
        chosen = np.asarray(items, dtype=int)
        sums = self.sums[:, chosen, :].sum(axis=1)
        counts = self.counts[:, chosen, :].sum(axis=1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)

    def key_mask(self, items: Sequence[int]) -> np.ndarray:
        return np.isin(self.item_of, np.asarray(items, dtype=int))

    def taus(self, items: Sequence[int], nights: np.ndarray) -> list[float]:
        from scipy.stats import kendalltau

        sub = self.scores(items)
        out = []
        for n in nights:
            tau = kendalltau(self.full[n], sub[n]).statistic
            out.append(float(tau) if np.isfinite(tau) else 0.0)  # a flat ranking says nothing
        return out

    def recall(self, items: Sequence[int], nights: np.ndarray) -> tuple[int, int]:
        """(alarm nights, of them caught by ``items``)."""
        alarms = self.regressed[nights].any(axis=1)
        caught = self.regressed[nights][:, self.key_mask(items)].any(axis=1)
        return int(alarms.sum()), int((alarms & caught).sum())

    def score(self, items: Sequence[int], nights: np.ndarray) -> SubsetScore:
        taus = self.taus(items, nights)
        alarms, caught = self.recall(items, nights)
        mask = self.key_mask(items)
        key_total = int(self.regressed[nights].sum())
        key_caught = int(self.regressed[nights][:, mask].sum())
        return SubsetScore(
            nights=len(nights), tau=float(np.mean(taus)) if taus else math.nan,
            tau_per_night=taus, alarms=alarms, caught=caught,
            recall=caught / alarms if alarms else math.nan, key_regressions=key_total,
            key_caught=key_caught, key_recall=key_caught / key_total if key_total else math.nan,
        )


def _item_costs(suite: _Suite, budget_by: str) -> np.ndarray:
    per_key = np.ones(len(suite.item_of)) if budget_by == "keys" else suite.key_cost
    return np.bincount(suite.item_of, weights=per_key, minlength=len(suite.items))


def _greedy(suite: _Suite, costs: np.ndarray, cap: float, nights: np.ndarray,
            objective_nights: int, weight: float) -> list[int]:
    """Greedy items within ``cap`` maximising the objective on ``nights`` (module doc)."""
    if len(nights) > objective_nights:
        tau_nights = nights[np.linspace(0, len(nights) - 1, objective_nights).round().astype(int)]
    else:
        tau_nights = nights

    def objective(items: list[int]) -> float:
        alarms, caught = suite.recall(items, nights)
        recall = caught / alarms if alarms else 0.0
        return weight * recall + (1 - weight) * float(np.mean(suite.taus(items, tau_nights)))

    chosen: list[int] = []
    spent, current = 0.0, objective([])
    while True:
        fits = [i for i in range(len(suite.items))
                if i not in chosen and spent + costs[i] <= cap + 1e-9]
        if not fits:
            return chosen
        gains = {i: objective(chosen + [i]) - current for i in fits}
        best = max(fits, key=lambda i: (gains[i] / costs[i], -costs[i], -i))
        chosen.append(best)
        spent += costs[best]
        current += gains[best]


def _random_fill(rng: np.random.Generator, costs: np.ndarray, cap: float) -> list[int]:
    chosen, spent = [], 0.0
    for i in rng.permutation(len(costs)):
        if spent + costs[i] <= cap + 1e-9:
            chosen.append(int(i))
            spent += costs[i]
    return chosen


def score_subset(history: SuiteHistory, items: Sequence[str],
                 nights: Sequence[int] | None = None) -> SubsetScore:
    """How the subset of ``items`` (item names of ``history.keys``) does on ``nights``
    (positions in ``history.p50_ms``; default all). Raises ConfigError on unknown items."""
    suite = _Suite(history)
    unknown = [i for i in items if i not in suite.items]
    if unknown:
        raise ConfigError(f"unknown item(s) {', '.join(map(str, unknown))}; the history holds "
                          f"{', '.join(suite.items[:10])}")
    chosen = [suite.items.index(i) for i in items]
    chosen_nights = np.arange(len(history.p50_ms)) if nights is None else np.asarray(nights)
    return suite.score(chosen, chosen_nights)


def choose_subset(
    history: SuiteHistory | pd.DataFrame,
    budget: float,
    *,
    budget_by: str = "keys",
    held_out: float = 1 / 3,
    weight: float = 0.5,
    objective_nights: int = 12,
    random_draws: int = 100,
    seed: int = 0,
) -> SubsetReport:
    """Choose the items to run nightly within ``budget`` and say how well that preserves the
    full suite (see the module doc for the method and the figures).

    ``budget``: share (0, 1] of the suite's keys (``budget_by="keys"``) or of its measuring time
    (``"time"``, from ``keys.cost_s``). ``held_out``: share of the latest nights kept for
    scoring. ``weight``: weight of alarm recall against Kendall tau in the objective.
    ``random_draws``: random subsets to compare with (0: none). ``history`` may also be stored
    results (a ``ResultStore.query()`` frame already cut to the suite's history, e.g.
    ``tag:nightly``), read with :func:`costmeter.reports.history.suite_history`'s defaults.
    Raises ConfigError on a budget outside (0, 1], a budget below the cheapest item, or too few
    nights.
    """
    if isinstance(history, pd.DataFrame):
        from costmeter.reports.history import suite_history

        history = suite_history(history)
    if not 0 < budget <= 1:
        raise ConfigError(f"budget {budget} must be in (0, 1], e.g. 0.1 for 10% of the suite")
    if budget_by not in BUDGET_KINDS:
        raise ConfigError(f"budget_by {budget_by!r} is not one of {', '.join(BUDGET_KINDS)}")
    if not 0 < held_out < 1:
        raise ConfigError(f"held_out {held_out} must be in (0, 1), e.g. 0.33")
    if not 0 <= weight <= 1:
        raise ConfigError(f"weight {weight} must be in [0, 1]")
    n_nights = len(history.p50_ms)
    n_test = int(round(n_nights * held_out))
    if n_nights < MIN_NIGHTS or n_test < 2 or n_nights - n_test < 2:
        raise ConfigError(
            f"the history holds {n_nights} nights; choosing and scoring a subset needs at least "
            f"{MIN_NIGHTS} (some to choose on, some held out); select a longer history"
        )
    suite = _Suite(history)
    costs = _item_costs(suite, budget_by)
    cap = budget * float(costs.sum())
    if costs.min() > cap + 1e-9:
        cheapest = suite.items[int(np.argmin(costs))]
        raise ConfigError(
            f"budget {budget:g} of {budget_by} holds no whole item; the cheapest ({cheapest}) "
            f"is {costs.min() / costs.sum():.3g} of the suite; raise --budget"
        )
    train = np.arange(n_nights - n_test)
    test = np.arange(n_nights - n_test, n_nights)
    every = np.arange(n_nights)
    evaluated = _greedy(suite, costs, cap, train, objective_nights, weight)
    final = _greedy(suite, costs, cap, every, objective_nights, weight)
    held = suite.score(evaluated, test)
    baseline = None
    if random_draws > 0:
        rng = np.random.default_rng(seed)
        draws = [suite.score(_random_fill(rng, costs, cap), test) for _ in range(random_draws)]
        taus = np.array([d.tau for d in draws])
        recalls = np.array([d.recall for d in draws])
        baseline = RandomBaseline(
            draws=random_draws, tau=float(np.mean(taus)),
            recall=float(np.nanmean(recalls)) if np.isfinite(recalls).any() else math.nan,
            beaten_tau=float(np.mean(held.tau >= taus)),
            beaten_recall=(float(np.mean(held.recall >= recalls))
                           if math.isfinite(held.recall) else math.nan),
        )
    mask = suite.key_mask(final)
    all_keys = _item_costs(suite, "keys")
    all_time = _item_costs(suite, "time")
    return SubsetReport(
        keys=[k for k, m in zip(suite.key_ids, mask) if m],
        labels=[label for label, m in zip(suite.labels, mask) if m],
        items=[suite.items[i] for i in final],
        budget=float(budget),
        budget_by=budget_by,
        cost_share={"keys": float(all_keys[final].sum() / all_keys.sum()),
                    "time": float(all_time[final].sum() / all_time.sum())},
        evaluated_items=[suite.items[i] for i in evaluated],
        train_nights=[str(history.p50_ms.index[n]) for n in train],
        test_nights=[str(history.p50_ms.index[n]) for n in test],
        held_out=held,
        train=suite.score(evaluated, train),
        random=baseline,
        settings={"held_out": held_out, "weight": weight, "objective_nights": objective_nights,
                  "seed": seed, "contestants": suite.contestants},
    )
