"""Hardware-aware NAS with costmeter's batch latency API: Optuna NSGA-II, a zero-cost accuracy
proxy, a latency budget, and the final Pareto set measured for real.

Objectives: predicted latency on a device (a lookup table or a learned ``.costmodel``; minimise)
and an accuracy proxy computed for real on the candidate network at initialisation (NASWOT,
Mellor et al. 2021: log-determinant of the ReLU activation-pattern kernel over a batch of
random inputs; or synflow, Tanaka et al. 2020; or a user-supplied accuracy table; maximise).
The budget is an NSGA-II constraint at a confidence: a candidate is feasible when its measured
latency stays within the budget with probability >= ``--confidence`` (the model's one-sided
conformal upper bound is within it: ``satisfies(archs, budget, confidence)``), and the
constraint NSGA-II minimises is that bound minus the budget. A candidate that is not feasible is
not scored by the proxy at all (the point of a microsecond latency model in the loop). Each
NSGA-II generation is asked for as a batch and its latencies predicted in one call.

A lookup table needs a calibration on measured whole networks for that bound (``bench lut
calibrate``; see :mod:`costmeter.predictors.lut.calibrate`): without ``--lut``/``--predictor``
a table is measured and calibrated first, and an uncalibrated table given with ``--lut`` is
calibrated (and saved) before the search; both are cached in the working folder.

The feasible Pareto set is then measured like ``bench run`` does (harness runner, one isolated
worker per network, results in the store under the tag ``nas-search``), interleaved with a fixed
reference network (ref, n1, ref, n2, ..., ref) so that the machine's drift during the pass shows,
and against the reference's median when the table was calibrated. The script prints predicted vs
measured latency per member and the figures that say whether the budget held: the share of the
returned networks measured within the budget, the share whose measured median is within ±10 %
of the prediction, the bias and Spearman's rho; it writes ``trials.csv``, ``pareto.csv`` and
``pareto.png`` to ``--out``.

Small settings finish in a few minutes on a CPU::

    python examples/nas_search.py --space nb201 --trials 40 --population 10
    python examples/nas_search.py --space ofa_mbv3 --resolutions 128,160 --trials 60 --population 12

The budget check of ofa_mbv3 (on a quiet machine: one pinned CPU, one thread; about 10 minutes:
the table, ~1 min; the proxy, 1-2 s per candidate within the budget; about 100 whole networks
measured, ~1.5 s each: 30 for the calibration, up to 20 returned, the reference between them)::

    python examples/nas_search.py --space ofa_mbv3 --resolutions 128,160 --trials 200 \
        --population 20 --budget-ms 3.06 --confidence 0.9 --measure 20 --threads 1 --cpus 1 \
        --workdir .costmeter-nas --out .costmeter-nas/search
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from costmeter.predictors.estimators.evaluate import budget_summary, summary_lines

OFA_STAGES, OFA_SLOTS = 5, 4


# ----------------------------------------------------------------------------- zero-cost proxies
def naswot_score(module: Any, input_shape: Sequence[int], batch: int = 16, seed: int = 0) -> float:
    """NASWOT: log |K_H|, K_H[i, j] = number of ReLU-like units where inputs i and j share their
    on/off state (= N_A - Hamming distance of the binary codes), random inputs, batch-norm on
    batch statistics."""
    import torch

    codes: list[torch.Tensor] = []

    def record(_: Any, __: Any, out: torch.Tensor) -> None:
        codes.append((out > 0).flatten(1).to(torch.float64))

    hooks = [m.register_forward_hook(record) for m in module.modules()
             if isinstance(m, (torch.nn.ReLU, torch.nn.Hardswish))]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_shape[1:]), generator=generator)
    module.train()
    try:
        with torch.no_grad():
            module(x)
    finally:
        for hook in hooks:
            hook.remove()
    c = torch.cat(codes, dim=1)
    kernel = c @ c.T + (1.0 - c) @ (1.0 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


def synflow_score(module: Any, input_shape: Sequence[int]) -> float:
    """synflow: sum over parameters of |theta * d R / d theta| with R the output sum of the
    network with absolute weights on an all-ones input (float64, batch-norm in eval mode);
    reported as log10 to keep it on a readable scale."""
    import torch

    module = module.double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.abs_()
    module.zero_grad()
    module(torch.ones((1, *input_shape[1:]), dtype=torch.float64)).sum().backward()
    total = sum(float((p.detach() * p.grad).abs().sum()) for p in module.parameters()
                if p.grad is not None)
    return math.log10(total) if total > 0 else float("-inf")


class Proxy:
    """The accuracy objective: a zero-cost proxy (cached per architecture) or a table."""

    def __init__(self, space: str, name: str, batch: int, table: str | None) -> None:
        from costmeter.models.spaces import get_space

        self.space, self.name, self.batch = space, name, batch
        self.module = get_space(space)
        self.cache: dict[str, float] = {}
        self.table = self._read_table(table) if table else None

    def _read_table(self, path: str) -> dict[str, float]:
        import pandas as pd

        from costmeter.errors import ConfigError

        frame = pd.read_csv(path)
        if not {"arch", "accuracy"} <= set(frame.columns):
            raise ConfigError(f"{path} needs columns arch and accuracy")
        return {self.module.canonical(a): float(v) for a, v in zip(frame["arch"], frame["accuracy"])}

    def __call__(self, arch: str) -> float:
        if arch not in self.cache:
            if self.table is not None:
                if arch not in self.table:
                    from costmeter.errors import ConfigError

                    raise ConfigError(f"accuracy table has no row for {arch}; give a table that "
                                      "covers the space, or use --proxy")
                self.cache[arch] = self.table[arch]
            else:
                import torch

                torch.manual_seed(0)
                net = self.module.build_torch(arch)
                shape = self.module.input_shape(arch, 1)
                self.cache[arch] = (naswot_score(net, shape, self.batch) if self.name == "naswot"
                                    else synflow_score(net, shape))
        return self.cache[arch]


# ----------------------------------------------------------------------------- search space
def suggest_arch(trial: Any, space: str, resolutions: Sequence[int]) -> str:
    """One architecture from Optuna's categorical choices (every slot always suggested, so the
    search space stays fixed for NSGA-II; slots beyond a stage's depth are ignored)."""
    if space == "nb201":
        from costmeter.models.spaces import nb201

        ops = [trial.suggest_categorical(f"edge{i}{j}", list(nb201.OPS)) for i, j in nb201.EDGES]
        return (f"|{ops[0]}~0|+|{ops[1]}~0|{ops[2]}~1|+|{ops[3]}~0|{ops[4]}~1|{ops[5]}~2|")
    groups = []
    r = trial.suggest_categorical("resolution", list(resolutions))
    for s in range(OFA_STAGES):
        depth = trial.suggest_categorical(f"depth{s + 1}", [2, 3, 4])
        tokens = [f"k{trial.suggest_categorical(f'kernel{s + 1}{b + 1}', [3, 5, 7])}"
                  f"e{trial.suggest_categorical(f'expand{s + 1}{b + 1}', [3, 4, 6])}"
                  for b in range(OFA_SLOTS)]
        groups.append(",".join(tokens[:depth]))
    return f"r{r}|" + "|".join(groups)


# ----------------------------------------------------------------------------- latency model
def latency_model(args: argparse.Namespace, resolutions: Sequence[int], say: Any) -> Any:
    """The table or predictor given, else a table measured now (cached in the working folder)."""
    from costmeter import load_lut, load_predictor
    from costmeter.predictors.lut.table import build_lut, default_lut_path

    if args.predictor:
        return load_predictor(args.predictor, device=args.device, runtime=args.runtime,
                              space=args.space)
    res = resolutions if args.space == "ofa_mbv3" else None
    if args.lut:
        path = Path(args.lut)
        table = load_lut(path, device=args.device, runtime=args.runtime, resolutions=res,
                         space=args.space)
    else:
        path = default_lut_path(args.workdir, args.space, args.device, args.runtime, res)
        if path.is_file():
            say(f"using the lookup table {path}")
            table = load_lut(path, device=args.device, runtime=args.runtime, space=args.space)
        else:
            say(f"measuring a {args.space} lookup table on {args.device}/{args.runtime} (once) ...")
            table = build_lut(args.space, args.device, args.runtime, res, workdir=args.workdir,
                              threads=args.threads, output=path)
    if not table.calibrated:
        from costmeter.predictors.lut.calibrate import calibrate_lut
        from costmeter.results.store import ResultStore, default_store_url

        say(f"table {table.calibration_note()}")
        say(f"calibrating it: {args.calibration_networks} whole networks measured, interleaved "
            "with a reference network ...")
        with ResultStore(default_store_url(Path(args.workdir))) as store:
            _, run = calibrate_lut(table, args.calibration_networks, workdir=args.workdir,
                                   min_time_s=args.min_time, store=store)
        table.save(path)
        say(run.describe())
    say(f"table {table.calibration_note()}")
    return table


# ----------------------------------------------------------------------------- search
def search(args: argparse.Namespace, model: Any, proxy: Proxy, budget: float,
           resolutions: Sequence[int], say: Any) -> Any:
    """NSGA-II over the space; every generation's latencies predicted in one batch call."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=args.population, seed=args.seed)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    floor = None
    done = 0
    while done < args.trials:
        trials = [study.ask() for _ in range(min(args.population, args.trials - done))]
        archs = [suggest_arch(t, args.space, resolutions) for t in trials]
        latency, uncertainty = model.predict(archs)
        upper = model.upper(archs, args.confidence)  # the bound behind satisfies()
        within = model.satisfies(archs, budget, confidence=args.confidence)
        for trial, arch, ms, unc, high, feasible in zip(trials, archs, latency, uncertainty, upper, within):
            trial.set_user_attr("arch", arch)
            trial.set_user_attr("latency_ms", float(ms))
            trial.set_user_attr("uncertainty_ms", float(unc))
            trial.set_user_attr("upper_ms", float(high))
            trial.set_user_attr("feasible", bool(feasible))
            # the bound over the budget (an infinite bound: far over it)
            trial.set_constraint("latency_over_budget_ms", min(float(high) - budget, 1e6))
            score = proxy(arch) if feasible else None
            if score is not None:
                floor = score if floor is None else min(floor, score)
            trial.set_user_attr("proxy_scored", bool(feasible))
            # an infeasible candidate is never scored: NSGA-II ranks it by its violation
            study.tell(trial, [float(ms), score if score is not None else (floor or 0.0)])
        done += len(trials)
        say(f"{done}/{args.trials} trials, {sum(t.user_attrs['proxy_scored'] for t in study.trials)}"
            f" within {budget:.3g} ms at {args.confidence:.0%} confidence")
    return study


def pareto_members(study: Any, limit: int) -> list[Any]:
    """Feasible Pareto-optimal trials (within the budget at the confidence), one per
    architecture, by latency; at most ``limit``, spread evenly over the front."""
    seen, front = set(), []
    for trial in sorted(study.best_trials, key=lambda t: t.values[0]):
        arch = trial.user_attrs["arch"]
        if trial.user_attrs["feasible"] and arch not in seen:
            seen.add(arch)
            front.append(trial)
    if len(front) > limit:
        picks = np.unique(np.round(np.linspace(0, len(front) - 1, limit)).astype(int))
        front = [front[i] for i in picks]
    return front


def measure(args: argparse.Namespace, model: Any, archs: Sequence[str],
            resolutions: Sequence[int]) -> Any:
    """Measure whole networks like ``bench run`` (harness runner, results in the store),
    interleaved with a reference network: the calibration's when the model is a calibrated
    table, else the space's (:func:`costmeter.predictors.lut.calibrate.reference_arch`)."""
    from costmeter.predictors.lut.calibrate import measure_interleaved, reference_arch
    from costmeter.results.store import ResultStore, default_store_url

    calibration = getattr(model, "calibration", None)
    reference = (calibration.info.get("reference") if calibration is not None else None) or \
        reference_arch(args.space, resolutions)
    with ResultStore(default_store_url(Path(args.workdir))) as store:
        return measure_interleaved(args.space, archs, reference, args.device, args.runtime,
                                   args.workdir, args.threads, args.min_time, store, tag="nas-search")


def pareto_plot(trials: Any, front: Any, budget: float, path: Path, title: str) -> None:
    """Every trial (predicted latency vs proxy), the Pareto members with their measured latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = trials[trials["proxy_scored"]]
    ax.scatter(scored["latency_ms"], scored["proxy"], s=14, c="0.7", label="candidates")
    over = trials[~trials["proxy_scored"]]
    if len(over):
        ax.scatter(over["latency_ms"], np.full(len(over), scored["proxy"].min() if len(scored) else 0),
                   marker="x", s=14, c="0.8", label=f"not within budget at the confidence (not scored)")
    ax.plot(front["predicted_ms"], front["proxy"], "o-", c="C0", label="Pareto set, predicted")
    measured = front[np.isfinite(front["measured_ms"])]
    ax.scatter(measured["measured_ms"], measured["proxy"], marker="s", c="C3", label="measured")
    for _, row in measured.iterrows():
        ax.plot([row["predicted_ms"], row["measured_ms"]], [row["proxy"]] * 2, c="C3", lw=0.8)
    ax.axvline(budget, ls="--", c="k", lw=1, label=f"budget {budget:.3g} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("accuracy proxy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", choices=["ofa_mbv3", "nb201"], default="ofa_mbv3")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtime", default="onnxruntime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpus", default=None,
                   help="pin this script and every worker it starts to these CPUs, e.g. 2 or 4-7")
    p.add_argument("--lut", help="lookup table (.json) from `bench lut build`")
    p.add_argument("--predictor", help="learned predictor (.costmodel)")
    p.add_argument("--resolutions", default="128,160", help="ofa_mbv3 resolutions searched")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget (default: the median prediction of 500 random archs)")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="probability that a returned network measures within the budget")
    p.add_argument("--calibration-networks", type=int, default=30,
                   help="whole networks measured to calibrate an uncalibrated lookup table")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--proxy", choices=["naswot", "synflow"], default="naswot")
    p.add_argument("--proxy-batch", type=int, default=16)
    p.add_argument("--accuracy-table", help="CSV with columns arch, accuracy (instead of a proxy)")
    p.add_argument("--measure", type=int, default=6, help="Pareto members measured (at most)")
    p.add_argument("--min-time", type=float, default=0.5, help="sampling seconds per network")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=".costmeter")
    p.add_argument("--out", default=".costmeter/nas-search")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[int]:
    """Refuse bad settings before anything is measured (ConfigError, one line); returns the CPUs
    to pin to (empty: no pinning)."""
    from costmeter.errors import ConfigError
    from costmeter.predictors.estimators.conformal import check_coverage
    from costmeter.predictors.lut.calibrate import MIN_NETWORKS
    from costmeter.predictors.lut.table import check_budget
    from costmeter.predictors.workflows.build import check_pinning

    check_coverage(args.confidence, "--confidence")
    if args.budget_ms is not None:
        check_budget(args.budget_ms)
    if args.calibration_networks < MIN_NETWORKS:
        raise ConfigError(f"--calibration-networks must be >= {MIN_NETWORKS}, got {args.calibration_networks}")
    if args.measure < 1 or args.trials < 1 or args.population < 2 or not args.min_time > 0:
        raise ConfigError("--measure and --trials must be >= 1, --population >= 2 and --min-time > 0")
    cpus: list[int] = []
    for part in (args.cpus or "").split(","):
        low, dash, high = part.strip().partition("-")
        if not part.strip():
            continue
        if not (low.isdigit() and (not dash or high.isdigit())):
            raise ConfigError(f"--cpus {args.cpus!r} is not a CPU list; give e.g. 2 or 4-7")
        cpus += list(range(int(low), int(high if dash else low) + 1))
    check_pinning(cpus)
    return cpus


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the search; returns the trials and the Pareto frames, the budget summary and the
    output folder."""
    from costmeter.predictors.workflows.build import pinned

    args = parse_args(argv)
    with pinned(check_args(args)):
        return run(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Table (or predictor), search, interleaved measurement of the returned set, summary."""
    import pandas as pd

    from costmeter.predictors.estimators.evaluate import metrics
    from costmeter.predictors.lut.table import check_budget
    from costmeter.models.spaces import get_space

    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    resolutions = [int(r) for r in args.resolutions.split(",")] if args.space == "ofa_mbv3" else [32]
    model = latency_model(args, resolutions, say)
    if args.budget_ms is None:
        pool = get_space(args.space).sample(500, seed=args.seed + 1)
        if args.space == "ofa_mbv3":
            pool = [f"r{resolutions[i % len(resolutions)]}|{a.split('|', 1)[1]}" for i, a in enumerate(pool)]
        args.budget_ms = float(np.median(model.predict(pool)[0]))
    budget = check_budget(args.budget_ms)
    proxy = Proxy(args.space, args.proxy, args.proxy_batch, args.accuracy_table)
    say(f"searching {args.space} with NSGA-II: {args.trials} trials, population {args.population}, "
        f"budget {budget:.3g} ms at {args.confidence:.0%} confidence, objective "
        f"{'table accuracy' if args.accuracy_table else args.proxy}")
    study = search(args, model, proxy, budget, resolutions, say)
    trials = pd.DataFrame([{"number": t.number, "arch": t.user_attrs["arch"],
                            "latency_ms": t.values[0], "uncertainty_ms": t.user_attrs["uncertainty_ms"],
                            "upper_ms": t.user_attrs["upper_ms"], "proxy": t.values[1],
                            "proxy_scored": t.user_attrs["proxy_scored"]}
                           for t in study.trials])
    members = pareto_members(study, args.measure)
    archs = [t.user_attrs["arch"] for t in members]
    say(f"measuring {len(members)} Pareto members through the harness, interleaved with a "
        "reference network ...")
    run_ = measure(args, model, archs, resolutions) if members else None
    nan = np.full(len(members), np.nan)
    front = pd.DataFrame({"arch": archs,
                          "predicted_ms": [t.values[0] for t in members],
                          "upper_ms": [t.user_attrs["upper_ms"] for t in members],
                          "measured_ms": run_.measured_ms if run_ else nan,
                          "measured_p10_ms": run_.p10_ms if run_ else nan,
                          "proxy": [t.values[1] for t in members]})
    front["error_pct"] = (front["predicted_ms"] / front["measured_ms"] - 1) * 100
    front["within_budget"] = front["measured_ms"] <= budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_csv(out / "trials.csv", index=False)
    front.to_csv(out / "pareto.csv", index=False)
    source = args.predictor or args.lut or "measured lookup table"
    pareto_plot(trials, front, budget, out / "pareto.png",
                f"{args.space} on {args.device}/{args.runtime}: latency from {Path(source).name}")
    if not members:
        print(f"no candidate was within {budget:.3g} ms at {args.confidence:.0%} confidence "
              f"(smallest bound: {trials['upper_ms'].min():.3g} ms); raise --budget-ms, lower "
              "--confidence or run more --trials")
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        if members:
            print(front.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if run_ is not None:
        print(run_.describe())
        calibration = getattr(model, "calibration", None)
        then = calibration.info.get("reference_median_ms") if calibration is not None else None
        ref = run_.reference_ms[np.isfinite(run_.reference_ms)]
        if then and ref.size:
            ratio = float(np.median(ref) / then)
            front["measured_at_calibration_ms"] = front["measured_ms"] / ratio
            front.to_csv(out / "pareto.csv", index=False)
            print(f"reference network now {np.median(ref):.3f} ms against {then:.3f} ms when the "
                  f"table was calibrated ({(ratio - 1) * 100:+.1f} %: the machine's drift between "
                  "the two passes)")
    summary = budget_summary(front["measured_ms"], front["predicted_ms"], budget)
    for line in summary_lines(summary, budget, args.confidence) if members else []:
        print(line)
    if "measured_at_calibration_ms" in front:
        again = budget_summary(front["measured_at_calibration_ms"], front["predicted_ms"], budget)
        print(f"with the measurements scaled by the reference's drift since the calibration: "
              f"{again['within_budget_pct']:.0f} % within the budget, {again['within_10_pct']:.0f} % "
              f"within ±10 %, bias {again['bias_pct']:+.1f} %")
    ok = np.isfinite(front["measured_ms"].to_numpy())
    if ok.sum() >= 2:  # p10: what a quiet machine would show (see costmeter.predictors.lut.check)
        m = metrics(front["measured_p10_ms"][ok], front["predicted_ms"][ok])
        print(f"against the 10th percentile instead: bias {m['bias_pct']:+.1f} %, within ±10 % "
              f"{m['within_10_pct']:.0f} %")
    say(f"wrote {out / 'trials.csv'}, {out / 'pareto.csv'}, {out / 'pareto.png'}")
    return {"trials": trials, "pareto": front, "budget_ms": budget, "summary": summary, "out": out}


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # ConfigError and friends: one line, exit code 2
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
