"""Hardware-aware NAS with costmeter's batch latency API: Optuna NSGA-II, a zero-cost accuracy
proxy, a latency budget, and the final Pareto set measured for real.

Objectives: predicted latency on a device (a lookup table or a learned ``.costmodel``; minimise)
and an accuracy proxy computed for real on the candidate network at initialisation (NASWOT,
Mellor et al. 2021: log-determinant of the ReLU activation-pattern kernel over a batch of
random inputs; or synflow, Tanaka et al. 2020; or a user-supplied accuracy table; maximise).
The budget is an NSGA-II constraint; a candidate predicted over budget is not scored by the
proxy at all (the point of a microsecond latency model in the loop). Each NSGA-II generation is
asked for as a batch and its latencies predicted in one call.

The feasible Pareto set is then measured like ``bench run`` does (harness runner, one isolated
worker per network, results in the store under the tag ``nas-search``); the script prints
predicted vs measured latency per member and writes ``trials.csv``, ``pareto.csv`` and
``pareto.png`` to ``--out``.

Without ``--lut``/``--predictor`` a table is measured first (cached in the working folder).
Small settings finish in a few minutes on a CPU::

    python examples/nas_search.py --space nb201 --trials 40 --population 10
    python examples/nas_search.py --space ofa_mbv3 --resolutions 128,160 --trials 60 --population 12
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
    if args.lut:
        return load_lut(args.lut, device=args.device, runtime=args.runtime,
                        resolutions=resolutions if args.space == "ofa_mbv3" else None,
                        space=args.space)
    res = resolutions if args.space == "ofa_mbv3" else None
    path = default_lut_path(args.workdir, args.space, args.device, args.runtime, res)
    if path.is_file():
        say(f"using the lookup table {path}")
        return load_lut(path, device=args.device, runtime=args.runtime, space=args.space)
    say(f"measuring a {args.space} lookup table on {args.device}/{args.runtime} (once) ...")
    return build_lut(args.space, args.device, args.runtime, res, workdir=args.workdir,
                     threads=args.threads, output=path)


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
        for trial, arch, ms, unc in zip(trials, archs, latency, uncertainty):
            trial.set_user_attr("arch", arch)
            trial.set_user_attr("latency_ms", float(ms))
            trial.set_user_attr("uncertainty_ms", float(unc))
            trial.set_constraint("latency_over_budget_ms", float(ms) - budget)
            feasible = ms <= budget
            score = proxy(arch) if feasible else None
            if score is not None:
                floor = score if floor is None else min(floor, score)
            trial.set_user_attr("proxy_scored", feasible)
            # an infeasible candidate is never scored: NSGA-II ranks it by its violation
            study.tell(trial, [float(ms), score if score is not None else (floor or 0.0)])
        done += len(trials)
        say(f"{done}/{args.trials} trials, {sum(t.user_attrs['proxy_scored'] for t in study.trials)}"
            f" within {budget:.3g} ms")
    return study


def pareto_members(study: Any, budget: float, limit: int) -> list[Any]:
    """Feasible Pareto-optimal trials, one per architecture, by latency; at most ``limit``,
    spread evenly over the front."""
    seen, front = set(), []
    for trial in sorted(study.best_trials, key=lambda t: t.values[0]):
        arch = trial.user_attrs["arch"]
        if trial.user_attrs["latency_ms"] <= budget and arch not in seen:
            seen.add(arch)
            front.append(trial)
    if len(front) > limit:
        picks = np.unique(np.round(np.linspace(0, len(front) - 1, limit)).astype(int))
        front = [front[i] for i in picks]
    return front


def measure(args: argparse.Namespace, archs: Sequence[str]) -> list[Any]:
    """Measure whole networks like ``bench run``: harness runner, results in the store."""
    from costmeter.harness.config import ProtocolConfig, RunConfig
    from costmeter.harness.runner import Runner, validate
    from costmeter.results.store import ResultStore, default_store_url

    protocol = ProtocolConfig(warmup_count=5, warmup_s=0.2, min_count=20, min_time_s=args.min_time,
                              max_time_s=max(10.0, 10 * args.min_time), percentiles=(50.0,),
                              auto_min_count=False, max_cv=0.5, max_rel_ci=0.02)
    configs = [RunConfig(model=f"{args.space}:{arch}", device=args.device, runtime=args.runtime,
                         threads=args.threads, protocol=protocol, check_outputs=False,
                         workdir=str(args.workdir), tag="nas-search") for arch in archs]
    jobs = validate(configs)
    with ResultStore(default_store_url(Path(args.workdir))) as store:
        return Runner(store, Path(args.workdir)).run(jobs, tag="nas-search")


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
                   marker="x", s=14, c="0.8", label="over budget (not scored)")
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
    p.add_argument("--lut", help="lookup table (.json) from `bench lut build`")
    p.add_argument("--predictor", help="learned predictor (.costmodel)")
    p.add_argument("--resolutions", default="128,160", help="ofa_mbv3 resolutions searched")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget (default: the median prediction of 500 random archs)")
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the search; returns the trials and the Pareto frames and the output paths."""
    import pandas as pd

    from costmeter.predictors.estimators.evaluate import metrics
    from costmeter.predictors.lut.table import check_budget
    from costmeter.models.spaces import get_space

    args = parse_args(argv)
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
        f"budget {budget:.3g} ms, objective {'table accuracy' if args.accuracy_table else args.proxy}")
    study = search(args, model, proxy, budget, resolutions, say)
    trials = pd.DataFrame([{"number": t.number, "arch": t.user_attrs["arch"],
                            "latency_ms": t.values[0], "uncertainty_ms": t.user_attrs["uncertainty_ms"],
                            "proxy": t.values[1], "proxy_scored": t.user_attrs["proxy_scored"]}
                           for t in study.trials])
    members = pareto_members(study, budget, args.measure)
    say(f"measuring {len(members)} Pareto members through the harness ...")
    results = measure(args, [t.user_attrs["arch"] for t in members]) if members else []
    samples = [np.asarray(r.measurement.all_samples_ns(), dtype=np.float64) / 1e6
               if r.measurement is not None and r.measurement.all_samples_ns() else np.full(1, np.nan)
               for r in results]
    front = pd.DataFrame({"arch": [t.user_attrs["arch"] for t in members],
                          "predicted_ms": [t.values[0] for t in members],
                          "uncertainty_ms": [t.user_attrs["uncertainty_ms"] for t in members],
                          "measured_ms": [float(np.median(x)) for x in samples],
                          "measured_p10_ms": [float(np.percentile(x, 10)) for x in samples],
                          "proxy": [t.values[1] for t in members]})
    front["error_pct"] = (front["predicted_ms"] / front["measured_ms"] - 1) * 100
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trials.to_csv(out / "trials.csv", index=False)
    front.to_csv(out / "pareto.csv", index=False)
    source = args.predictor or args.lut or "measured lookup table"
    pareto_plot(trials, front, budget, out / "pareto.png",
                f"{args.space} on {args.device}/{args.runtime}: latency from {Path(source).name}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(front.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ok = np.isfinite(front["measured_ms"].to_numpy())
    for column, label in (("measured_ms", "median"), ("measured_p10_ms", "10th percentile")):
        if ok.sum() >= 2:  # p10: what a quiet machine would show (see costmeter.predictors.lut.check)
            m = metrics(front[column][ok], front["predicted_ms"][ok])
            print(f"predicted vs measured {label} over {int(ok.sum())} networks: bias "
                  f"{m['bias_pct']:+.1f} %, MAPE {m['mape_pct']:.1f} %, within +-10 % "
                  f"{m['within_10_pct']:.0f} %, Spearman {m['spearman']:.2f}")
    say(f"wrote {out / 'trials.csv'}, {out / 'pareto.csv'}, {out / 'pareto.png'}")
    return {"trials": trials, "pareto": front, "budget_ms": budget, "out": out}


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # ConfigError and friends: one line, exit code 2
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
