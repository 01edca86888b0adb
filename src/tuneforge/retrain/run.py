"""`tuneforge retrain CONFIG --registry NAME`: a challenger trained on the champion's data plus new data,
promoted only when it beats the champion on the champion's frozen test split and is not significantly worse
on the held-out part of the live corrections (see `retrain.compare` for the rule and why).

The recipe, top to bottom: lock the registry (for the whole retrain: a second retrain or a promotion meanwhile
is refused), find the champion's run and dataset, prepare champion data + retrain.data through `prepare`
(test split frozen, live held-out rows added to it), train the challenger, evaluate both on the frozen test
split and the live held-out rows, decide, write
retrain.json/.md, and only then register (one atomic rename) and, if better, promote. A retrain killed at any
point before registering leaves the registry as it was: no version, no history line, the same champion.

Files go under train.output_dir, in one folder per challenger named by the version it will get:
`<train.output_dir>/<registry>-v<N>/{sources.jsonl, dataset/, run/}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.config import ConfigSource, RunConfig
from tuneforge.registry import Registry
from tuneforge.retrain.report import write_report
from tuneforge.retrain.sources import (
    Champion,
    Plan,
    champion_of,
    check_frozen_test,
    data_config,
    live_held_out,
    plan_sources,
    write_sources,
)

if TYPE_CHECKING:
    from tuneforge.retrain.compare import Decision


@dataclass
class Outcome:
    """What a retrain did: the challenger's run, its version, the decision and the report's path."""

    run: RunDir
    version: int
    decision: Decision
    report: Path


def _next_version(reg: Registry) -> int:
    return max((int(v["version"]) for v in reg.versions()), default=0) + 1


def plan_retrain(reg: Registry, cfg: RunConfig) -> Plan:
    """What a retrain would train on (the dry run): reads the registry and the inputs, writes nothing."""
    return plan_sources(champion_of(reg), cfg)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def retrain(reg: Registry, cfg: RunConfig, source: ConfigSource | None = None) -> Outcome:
    """Train, compare and register a challenger; promote it only when it is better (see the module doc)."""
    from tuneforge.data import prepare_dataset
    from tuneforge.retrain.compare import decide, evaluate_pair  # torch: not for a dry run
    from tuneforge.train import train

    source = source or ConfigSource(None)
    champion_of(reg)  # a missing registry or champion is refused before the lock creates anything
    with reg.locked("a retrain", nested=True):
        champion = champion_of(reg)
        # An MLflow mirror that cannot be reached would refuse the registration at the end: refuse it now,
        # before the training, and catch the mirror up with the folder on the way.
        reg.sync_mirror(required=False)
        plan = plan_sources(champion, cfg)
        version = _next_version(reg)
        work = Path(cfg.train.output_dir) / f"{reg.name}-v{version}"
        work.mkdir(parents=True, exist_ok=True)
        sources = work / "sources.jsonl"
        write_sources(plan, cfg, sources)
        data_cfg = data_config(plan, cfg, sources, work / "dataset")
        dataset = prepare_dataset(data_cfg, model=cfg.model)
        check_frozen_test(plan, dataset)

        run_dir = work / "run"
        challenger_cfg = cfg.model_copy(
            update={"data": data_cfg, "train": cfg.train.model_copy(update={"output_dir": str(run_dir)})}
        )
        # A folder left by a killed retrain of this very version: no registered version names it.
        run = train(
            challenger_cfg,
            source.with_given({"data.path", "data.output_dir", "train.output_dir"}),
            overwrite=RunDir.is_run(run_dir),
        )
        live = live_held_out(plan, dataset) if plan.live else None
        result = evaluate_pair(champion.run, run, champion.dataset, cfg, live)
        decision = decide(result, cfg)
        report = _report(reg, champion, plan, dataset, run, version, result, decision, cfg)
        write_report(run.path, report)

        # Last: the version appears by one rename; then the decision and, if better, the new pointer.
        reason = f"retrain from version {champion.number}: {decision.reason}"
        summary = {
            "champion": champion.number,
            "metric": decision.metric,
            "champion_value": decision.champion,
            "challenger_value": decision.challenger,
            "p_value": decision.test.get("p_value"),
            "promoted": decision.promote,
            "frozen_test": plan.frozen_test,
            "live": _live_summary(decision.live),
        }
        record = reg.register(
            run.path, reason, extra={"eval": {"test": _scalars(result["challenger"])}, "retrain": summary}
        )
        version = int(record["version"])
        reg.record("retrain", version, decision.reason, **summary)
        if decision.promote:
            reg.promote(version, reason)
    return Outcome(run, version, decision, run.path / "retrain.json")


def _rows(path: Path) -> set[bytes]:
    return set(path.read_bytes().splitlines())


def _live_summary(live: dict[str, Any] | None) -> dict[str, Any] | None:
    """The live held-out check as the registry history keeps it (numbers, not the whole evaluation)."""
    if live is None:
        return None
    keep = ("n", "judged", "champion", "challenger", "p_value", "blocks", "verdict")
    return {k: live[k] for k in keep if k in live}


def _report(
    reg: Registry,
    champion: Champion,
    plan: Plan,
    dataset: DatasetDir,
    run: RunDir,
    version: int,
    result: dict[str, Any],
    decision: Decision,
    cfg: RunConfig,
) -> dict[str, Any]:
    m = dataset.manifest
    return {
        "kind": "tuneforge.retrain",
        "registry": reg.name,
        "registry_path": str(reg.path.resolve()),
        "champion": {"version": champion.number, "run": str(champion.run.path)},
        "challenger": {"version": version, "run": str(run.path.resolve())},
        "frozen_test": {
            "dataset": str(champion.dataset.path.resolve()),
            "fingerprint": plan.frozen_test,
            "rows": result["n"],
            # Every frozen row is in the new test split (live held-out rows join it, nothing else).
            "kept_in_new_dataset": _rows(champion.dataset.split_path("test"))
            <= _rows(dataset.split_path("test")),
        },
        "live": {
            "sources": plan.live,
            "holdout": cfg.retrain.live_holdout,
            "held_out_as_read": plan.held_out,
            "rows": (result.get("live") or {}).get("n", 0),
            "min_n": cfg.retrain.live_min_n,
        },
        "sources": [s.__dict__ for s in plan.sources],
        "dataset": {
            "path": str(dataset.path.resolve()),
            "fingerprint": m.get("fingerprint"),
            "splits": m.get("splits"),
            "counts": m.get("counts"),
        },
        "rule": {"metric": decision.metric, "min_gain": cfg.retrain.min_gain, "alpha": cfg.retrain.alpha},
        "evaluation": result,
        "decision": decision.to_dict(),
    }
