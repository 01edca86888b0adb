"""The `tuneforge` command: one subcommand per stage, each a thin call into that stage.

Stage modules (and so torch) are imported inside the commands, which keeps `tuneforge --help` instant.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuneforge.errors import TuneforgeError

app = typer.Typer(
    help="tuneforge: prepare data, fine-tune and evaluate language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

#: A `section.key=value` override (the values `load_config` takes), as opposed to a path or a model name.
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.max_steps=100.")
]


def print_wrapped(text: str, *, indent: int = 0, hang: int = 2) -> None:
    """`text` wrapped to the terminal at word boundaries, `indent` spaces in, continuation lines `hang` more:
    a verdict or a reason longer than a line reads as one item (rich's own wrap starts them at column 0)."""
    wrapped = textwrap.fill(
        text,
        width=console.width,
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,  # a path or a number stays whole, on a line of its own if need be
        break_on_hyphens=False,
    )
    console.print(escape(wrapped), highlight=False, soft_wrap=True)


def print_paths(rows: list[tuple[str, Any]]) -> None:
    """What a command wrote, one labelled path a line (labels aligned): at 80 columns a long path wraps
    alone instead of splitting a line that holds two."""
    width = max(len(label) for label, _ in rows) + 1
    for label, path in rows:
        console.print(escape(f"{label + ':':<{width}} {path}"), highlight=False, soft_wrap=True)


@app.command()
def prepare(
    config: ConfigArg,
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option(help="Prepare again even if the inputs did not change.")] = False,
) -> None:
    """Raw data → a validated, cleaned, deduplicated, split dataset directory."""
    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset

    cfg, _ = load_config(config, overrides)
    ds = prepare_dataset(cfg.data, force=force, model=cfg.model)
    m = ds.manifest
    for label, text in prepare_summary(m, ds.path).items():
        print_wrapped(f"{label + ':':<8} {text}", hang=9)


def prepare_summary(manifest: dict[str, Any], path: Path) -> dict[str, str]:
    """What `prepare` made, by label: the folder, its splits, what happened to the rows (the counts that
    are not zero; the reasons are in the report), the report."""
    counts = manifest.get("counts") or {}
    left_out = ", ".join(
        f"{k.replace('_', ' ')} {v:,}"
        for k, v in counts.items()
        if v and k not in ("read", "written", "rejected")
    )
    rows = f"{counts.get('read', 0):,} read, {counts.get('written', 0):,} written"
    return {
        "dataset": f"{path} ({manifest['format']})",
        "splits": " · ".join(f"{k} {v:,}" for k, v in manifest["splits"].items()),
        "rows": rows + (f"; not written or changed: {left_out}" if left_out else ""),
        "report": str(path / "report.html"),
    }


@app.command()
def export(
    dataset_dir: Annotated[Path, typer.Argument(help="A dataset directory made by `tuneforge prepare`.")],
    to: Annotated[str, typer.Option("--to", help="openai (chat JSONL) or alpaca (JSON).")],
    out: Annotated[Path, typer.Option("--out", help="The file to write.")],
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "train",
) -> None:
    """A prepared dataset → OpenAI chat JSONL or Alpaca JSON, for other fine-tuning tools."""
    from tuneforge.data.export import export_dataset

    n = export_dataset(dataset_dir, to=to, out=out, split=split)
    console.print(f"[green]exported[/green] {n} {split} examples to {out}")


@app.command()
def train(
    config: ConfigArg,
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in train.output_dir from its latest checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option(help="With --resume: accept a changed config.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Delete an existing run in train.output_dir first.")
    ] = False,
    ignore_memory_check: Annotated[
        bool, typer.Option(help="Start even if the run is estimated not to fit in memory.")
    ] = False,
    time_budget: Annotated[
        str | None,
        typer.Option(help="Training time allowed, e.g. 30m or 2h (= train.time_budget): then it stops."),
    ] = None,
) -> None:
    """Dataset + model + method → a run directory (adapter or weights, metrics, checkpoints)."""
    from tuneforge.config import load_config
    from tuneforge.train import train as run_training

    if time_budget is not None:
        overrides = [*(overrides or []), f"train.time_budget={time_budget}"]
    cfg, source = load_config(config, overrides)
    run = run_training(
        cfg, source, resume=resume, force=force, overwrite=overwrite, memory_check=not ignore_memory_check
    )
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, once rather than once per process
        m = run.manifest
        console.print(f"[green]run[/green] {run.path}  steps={m.get('step')}  final={m.get('final')}")
        line = final_validation(run)
        if line:
            console.print(line, highlight=False)


@app.command()
def estimate(
    config: ConfigArg,
    overrides: Overrides = None,
    gpu: Annotated[
        str | None, typer.Option(help="Estimate for a GPU: a name (H100, L4, RTX 4090) or a size (24GB).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu: estimate for this machine's CPU.")] = None,
    processes: Annotated[int, typer.Option(min=1, help="Processes (GPUs) the run is launched with.")] = 1,
    measure: Annotated[
        bool, typer.Option("--measure", help="Also train 3 real steps and print measured beside estimated.")
    ] = False,
) -> None:
    """Peak memory (by term) and time per step and epoch of the run CONFIG describes, before any download."""
    from tuneforge.config import load_config
    from tuneforge.models.estimate import (
        GIB,
        check_data_path,
        check_max_length,
        fmt_seconds,
        measured_shape,
        parse_gpu,
    )
    from tuneforge.models.estimate import estimate as run_estimate
    from tuneforge.models.estimate import measure as run_measure

    if gpu and device:
        raise TuneforgeError("give --gpu or --device, not both", where="--device")
    if device not in (None, "cpu"):
        raise TuneforgeError(
            f"unknown device {device!r}", where="--device", fix="use --device cpu or --gpu NAME"
        )
    if gpu:
        parse_gpu(gpu)
    cfg, source = load_config(config, overrides)
    check_data_path(cfg)
    cfg = _with_recipe_defaults(cfg, source, cuda=gpu is not None, processes=processes)
    check_max_length(cfg)
    est = run_estimate(cfg, device=gpu or device, processes=processes)
    for line in est.lines():
        text = line.lstrip(" ")
        print_wrapped(text, indent=len(line) - len(text), hang=2)
    if measure:
        got = run_measure(cfg)
        # A few steps meet smaller micro-batches than an epoch's largest: compare at the one they met.
        shape = measured_shape(est, got["micro_batch_tokens"])
        at = (
            est
            if shape is None
            else run_estimate(cfg, device=est.device, processes=processes, micro_batch=shape)
        )
        met = "" if shape is None else f" for its largest micro-batch, {shape[1]:,} tokens packed"
        console.print(
            f"measured (3 steps): peak {got['peak'] / GIB:.2f} GiB (estimated {at.peak / GIB:.2f}{met}, "
            f"{(at.peak - got['peak']) / max(got['peak'], 1):+.0%}), "
            f"{fmt_seconds(got['step_s'])} per step (estimated {fmt_seconds(est.step_s)})"
        )


def _with_recipe_defaults(cfg: Any, source: Any, *, cuda: bool, processes: int) -> Any:
    """The config as `tuneforge train` will run it: the recipe fills the unset keys (prepared data only)."""
    from tuneforge.data.lengths import lengths_for_model
    from tuneforge.data.prepare import already_prepared
    from tuneforge.models.recommend import apply_settings, defaults_for, describe_defaults

    dataset = already_prepared(cfg.data, cfg.model) if cfg.data.path else None
    if dataset is None:
        return cfg  # a raw file: its size and lengths are known only once `prepare` (or train) has run
    manifest = lengths_for_model(dataset, cfg.model, cfg.data.prompt_template)
    chosen = defaults_for(cfg, manifest, source.given, cuda=cuda, processes=processes)
    if chosen:
        console.print(escape(describe_defaults(cfg, manifest, chosen)), highlight=False, soft_wrap=True)
    return apply_settings(cfg, chosen, source) if chosen else cfg


@app.command()
def recommend(
    dataset_dir: Annotated[Path, typer.Argument(help="A dataset directory made by `tuneforge prepare`.")],
    gpu: Annotated[
        str | None, typer.Option(help="Recommend for a GPU: a name (H100, L4) or a size (24GB).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu: recommend for this machine's CPU.")] = None,
    budget_hours: Annotated[float | None, typer.Option(help="Training time available, in hours.")] = None,
    commercial: Annotated[
        bool, typer.Option("--commercial", help="Only models licensed for commercial use.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Folder the ready run configs are written to.")] = Path(
        "recommended"
    ),
) -> None:
    """A ranked short list of model + method + settings for a dataset, estimated, written as run configs."""
    from tuneforge.artifacts import DatasetDir
    from tuneforge.models.estimate import GIB, fmt_seconds, parse_gpu, resolve_device
    from tuneforge.models.recommend import check_out, write_configs
    from tuneforge.models.recommend import recommend as run_recommend

    if budget_hours is not None and not budget_hours > 0:
        raise TuneforgeError(
            f"{budget_hours:g} hours is not a training time",
            where="--budget-hours",
            fix="give the hours available for training, more than 0 (e.g. --budget-hours 2)",
        )
    check_out(out)  # before the estimates: a refused --out is said at once
    if gpu and device:
        raise TuneforgeError("give --gpu or --device, not both", where="--device")
    if gpu:
        parse_gpu(gpu)  # a nonsense GPU is refused before the dataset is read
    ds = DatasetDir.open(dataset_dir)
    if device not in (None, "cpu"):
        raise TuneforgeError(
            f"unknown device {device!r}", where="--device", fix="use --device cpu or --gpu NAME"
        )
    dev = resolve_device(gpu or device)
    recs = run_recommend(str(dataset_dir), ds.manifest, dev, budget_hours=budget_hours, commercial=commercial)
    if not recs:
        raise TuneforgeError(
            f"no catalog model fits {dev.name} ({dev.memory / GIB:.0f} GiB) within the budget",
            fix="a bigger GPU (--gpu), a larger --budget-hours, or a shorter model.max_length in prepare",
        )
    paths = write_configs(out, recs)
    console.print(f"recommended for {dataset_dir} on {dev.name}, best first:", highlight=False)
    for i, (r, path) in enumerate(zip(recs, paths, strict=True), 1):
        hours = "time unknown" if r.hours is None else f"about {fmt_seconds(r.hours * 3600)}"
        console.print(
            escape(f"{i}. {r.model} + {r.method}: peak {r.estimate.peak / GIB:.1f} GiB, {hours}"),
            style="bold",
            highlight=False,
        )
        # One block per recommendation, its lines wrapped under their label: the eight columns of a table
        # left the reasons a word per line at 80 columns.
        for label, text in (("settings", r.settings()), ("why", "; ".join(r.reasons)), ("config", path)):
            print_wrapped(f"{label}: {text}", indent=3, hang=0)
    console.print(f"train one with: tuneforge train {out}/1-....yaml")


@app.command()
def tune(
    config: ConfigArg,
    overrides: Overrides = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Finish this many trials in all (default: tune.trials).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Continue the study although the config changed.")] = False,
) -> None:
    """Hyperparameter search (Optuna): a run per trial in train.output_dir, best.yaml, a summary table."""
    from tuneforge.config import load_config
    from tuneforge.train.search import run_search
    from tuneforge.train.search_summary import summary_rows

    cfg, source = load_config(config, overrides)
    summary = run_search(cfg, source, trials=trials, force=force)
    header, rows = summary_rows(summary)
    table = Table(title=f"{len(summary.trials)} trials, {summary.metric} ({summary.direction}); * = best")
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print_paths(
        [
            ("best config", summary.best_config),
            ("summary", summary.path / "summary.md"),
            ("trials", summary.path / "trials.json"),
        ]
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `tuneforge train`.")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="eval.key=value overrides on top of the run's config, e.g. eval.batch_size=4; "
            "data.path=DIR: the run's prepared dataset where it is now (a moved project)."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="train, validation or test (default: eval.split).")
    ] = None,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Also evaluate the untuned base.")
    ] = False,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate the first N examples.")] = None,
) -> None:
    """A run → metrics in RUN_DIR/eval/<split>.json (<split>-first<N>.json for the first N examples only)."""
    from tuneforge.artifacts import read_json
    from tuneforge.evaluation import evaluate_run

    out = evaluate_run(
        run_dir,
        split=split,
        compare_base=compare_base or None,
        max_examples=max_examples,
        overrides=overrides,
    )
    result = read_json(out)
    print_comparison(result)
    print_verdicts(result)
    if result.get("answers"):  # a DPO run's answers on a chat split (evaluation/answers.py)
        from tuneforge.evaluation.report.answers import answer_lines

        for line in answer_lines(result["answers"], result["tuned"].get("reward_margin")):
            console.print(escape(line))
    if result.get("judge"):
        from tuneforge.evaluation.judge import summary_lines

        for line in summary_lines(result["judge"]):
            console.print(escape(line), highlight=False)
    print_paths(
        [
            ("metrics", out),
            ("predictions", out.with_name(out.stem + ".predictions.jsonl")),
            ("report", Path(result["run"]) / "report.html"),
        ]
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `tuneforge train`.")],
) -> None:
    """A run → RUN_DIR/report.html and report.md (data, model, training, evaluation) and the model card."""
    from tuneforge.evaluation.report import write_report

    out = write_report(run_dir)
    card = run_dir / "final" / "README.md"
    print_paths(
        [("report", out), ("markdown", out.with_name("report.md"))]
        + ([("model card", card)] if card.parent.is_dir() else [])
    )


human_eval = typer.Typer(help="Blind A/B rating of base vs tuned answers by people.", no_args_is_help=True)
app.add_typer(human_eval, name="human-eval")
RunArg = Annotated[Path, typer.Argument(help="A run directory evaluated with --compare-base.")]


@human_eval.command("export")
def human_eval_export(
    run_dir: RunArg,
    split: Annotated[
        str,
        typer.Option(
            help="The evaluation whose answers to rate: a split's full evaluation (test) or a short one's "
            "name (test-first12)."
        ),
    ] = "test",
    raters: Annotated[
        int, typer.Option(min=1, help="One sheet per rater, each in its own random order.")
    ] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Rate only the first N differing answers.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the side randomisation.")] = 0,
    force: Annotated[bool, typer.Option(help="Export again, replacing the sheets and their key.")] = False,
) -> None:
    """Blind A/B sheets (CSV and JSONL) in RUN_DIR/human-eval/sheets, the key kept apart in key.json."""
    from tuneforge.evaluation.human import export_sheets

    out = export_sheets(run_dir, split=split, raters=raters, limit=limit, seed=seed, force=force)
    from tuneforge.artifacts import read_json

    read = str(read_json(out / "key.json").get("split", split))  # the evaluation export resolved
    console.print(f"answers from: {run_dir / 'eval' / (read + '.predictions.jsonl')}")
    console.print(f"[green]sheets[/green] {out / 'sheets'}  (fill the preference column: 1, 2 or tie)")
    console.print(f"key:    {out / 'key.json'}  (do not show it to raters)")


@human_eval.command("import")
def human_eval_import(
    run_dir: RunArg,
    sheets: Annotated[list[Path], typer.Argument(help="Filled sheets (CSV or JSONL).")],
) -> None:
    """Filled sheets → win/tie/loss with intervals, agreement, and a preference dataset ready to train."""
    from tuneforge.artifacts import read_json
    from tuneforge.evaluation.human import import_ratings

    out = import_ratings(run_dir, sheets)
    result = read_json(out)
    o = result["overall"]
    console.print(
        f"tuned vs base over {o['n']} ratings: win {o['win']['value']:.1%} [{o['win']['lo']:.1%}, "
        f"{o['win']['hi']:.1%}], tie {o['tie']['value']:.1%}, loss {o['loss']['value']:.1%}; "
        f"net preference {o['net']['value']:+.1%} [{o['net']['lo']:+.1%}, {o['net']['hi']:+.1%}] "
        f"({o['test']}: p = {o['p_value']:.3g})"
    )
    for name in ("cohen_kappa", "krippendorff_alpha"):
        if result["agreement"].get(name) is not None:
            console.print(f"agreement: {name} {result['agreement'][name]:.3f}")
    if result.get("preference_dataset"):
        console.print(
            f"preference dataset: {result['preference_dataset']} ({result['preference_pairs']} pairs)"
        )
    console.print(f"results: {out}")


@app.command()
def quickstart(
    fast: Annotated[bool, typer.Option(help="A few steps on a handful of examples (for tests).")] = False,
    overrides: Overrides = None,
) -> None:
    """The whole chain on the embedded defaults: demo tweets → SmolLM2 + LoRA → base vs tuned."""
    from tuneforge.quickstart import run_quickstart

    result = run_quickstart(fast=fast, overrides=overrides)
    run = result["run"]
    print_comparison(result["eval"])
    print_verdicts(result["eval"])
    print_paths(
        [
            ("run directory", run.path),
            ("adapter", run.final),
            ("training log", run.metrics_path),
            ("evaluation", result["eval_path"]),
            ("loss curve", run.path / "loss.png"),
        ]
    )


@app.command()
def models(
    all_models: Annotated[
        bool, typer.Option("--all", help="List the catalog of common open models too.")
    ] = False,
    max_params: Annotated[str | None, typer.Option(help="With --all: at most this size (8B, 500M).")] = None,
    license: Annotated[
        str | None, typer.Option(help="With --all: only this licence (apache-2.0, mit).")
    ] = None,
    commercial: Annotated[
        bool, typer.Option("--commercial", help="With --all: only licences that allow commercial use.")
    ] = False,
    task: Annotated[
        str | None, typer.Option(help="With --all: models for causal-lm, classification or regression.")
    ] = None,
) -> None:
    """The built-in models and datasets, and the packages they come from."""
    from tuneforge import builtin

    table = Table(title="built-in models (use as model.name)")
    # The name is what users copy into their config: never folded or cut; the description folds to fit.
    names = [builtin.PREFIX + m.name for m in builtin.MODELS.values()]
    table.add_column("name", no_wrap=True, min_width=max(map(len, names)))
    table.add_column("kind", no_wrap=True)
    table.add_column("description", overflow="fold")
    for m in builtin.MODELS.values():
        table.add_row(builtin.PREFIX + m.name, m.kind, m.description)
    console.print(table)
    for m in builtin.MODELS.values():  # whole lines, so a command can be copied as it is
        console.print(f"install {builtin.PREFIX}{m.name}: {m.pip}", soft_wrap=True, highlight=False)
    for name, text in builtin.DATASETS.items():
        console.print(f"dataset {builtin.PREFIX}{name}: {text}")
    console.print("Any local Hugging Face folder or hub id works as model.name too.")
    if all_models:
        print_catalog(max_params=max_params, license=license, commercial=commercial, task=task)


def print_catalog(*, max_params: str | None, license: str | None, commercial: bool, task: str | None) -> None:
    """The offline catalog, filtered, as a table (hub ids work as model.name)."""
    from tuneforge.models.catalog import describe, parse_count, select

    if task not in (None, "causal-lm", "classification", "regression"):
        raise TuneforgeError(
            f"unknown task {task!r}", where="--task", fix="causal-lm, classification or regression"
        )
    try:
        limit = parse_count(max_params) if max_params else None
    except ValueError:
        raise TuneforgeError(
            f"not a size: {max_params!r}", where="--max-params", fix="e.g. 8B or 500M"
        ) from None
    rows = select(max_params=limit, commercial=commercial, license=license, task=task)
    table = Table(title=f"catalog: {len(rows)} models (sized offline; `tuneforge estimate` tells what fits)")
    for col in ("name", "hub id", "params", "kind", "context", "licence", "languages", "strengths"):
        table.add_column(col, overflow="fold")
    for m in rows:
        table.add_row(*describe(m))
    console.print(table)


@app.command("config-keys")
def config_keys() -> None:
    """Every config key with its type, default and meaning."""
    from tuneforge.config import config_keys as keys
    from tuneforge.models.methods import option_keys

    rows = keys()
    after_name = next(i for i, row in enumerate(rows) if row[0] == "method.name") + 1
    rows[after_name:after_name] = option_keys()  # each method validates its own options
    if not sys.stdout.isatty():  # piped into grep or a file: one whole line per key, not a folded table
        for key, kind, default, meaning in rows:
            print(f"{key}  ({kind}, default {default})  {meaning}")
        return
    table = Table()
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def final_validation(run: Any) -> str | None:
    """The validation numbers of the saved model: those of the best step when the run kept its best."""
    records = [r for r in run.metrics() if r.get("split") == "validation"]
    if not records:
        return None
    best = (run.manifest.get("best") or {}).get("step")
    chosen = next((r for r in reversed(records) if r.get("step") == best), records[-1])
    numbers = "  ".join(
        f"{k} {v:.4g}"
        for k, v in chosen.items()
        if k not in ("step", "split") and isinstance(v, int | float) and not isinstance(v, bool)
    )
    return f"validation at step {chosen['step']} (the saved model): {numbers}"


@app.command()
def serve(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Run directories (adapters of one base), a model folder / built-in, or registry:NAME "
            "(the registry's champion, switched on promotion without a restart). Default: serve.model."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A YAML file whose serve: section sets the options.")
    ] = None,
    keys: Annotated[Path | None, typer.Option(help="API keys file (default: serve.keys_file).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow binding beyond localhost without API keys.")
    ] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="serve.key=value, e.g. --set serve.log_db=null.")
    ] = None,
) -> None:
    """Runs → an OpenAI-compatible HTTP server (chat, completions, classify, streaming, keys, metrics).

    serve.key=value overrides may follow the targets, as after `train` and `evaluate` (or go in --set).
    """
    from tuneforge.serve.server import run_server

    targets, given = split_serve_args(targets or [])
    cfg = _serve_config(config, [*given, *(overrides or [])])
    updates: dict[str, Any] = {"host": host, "port": port, "keys_file": str(keys) if keys else None}
    for name, value in updates.items():
        if value is not None:
            setattr(cfg, name, value)
    run_server(list(targets or []), cfg, insecure=insecure)
    # The log is flushed and the socket closed; skip the seconds the interpreter spends freeing the models
    # (a process manager waiting on SIGTERM sees the exit at once).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def split_serve_args(args: list[str]) -> tuple[list[str], list[str]]:
    """`tuneforge serve`'s positional arguments as (targets, key=value overrides).

    An argument is an override when it reads section.key=value and names no existing path, so a run directory
    (runs/a, registry:NAME, builtin:...) stays a target, as before overrides were accepted here.
    """
    targets: list[str] = []
    overrides: list[str] = []
    for arg in args:
        is_override = OVERRIDE.match(arg) is not None and not Path(arg).exists()
        (overrides if is_override else targets).append(arg)
    return targets, overrides


def _serve_config(config: Path | None, overrides: list[str] | None) -> Any:
    from tuneforge.config import load_config

    bad = [o for o in overrides or [] if not o.startswith("serve.")]
    if bad:
        raise TuneforgeError(
            f"{bad[0]} is not a serve option",
            where="tuneforge serve",
            fix="give serve.KEY=VALUE (after the targets, or with --set); see `tuneforge config-keys`",
        )
    cfg, _ = load_config(config, overrides)
    return cfg.serve


@app.command()
def ui(
    workspace: Annotated[
        Path, typer.Option(help="The folder whose runs and datasets the UI shows (found by their manifests).")
    ] = Path("."),
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond localhost a login key is needed.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    keys: Annotated[
        Path | None,
        typer.Option(help="Serving keys file (tuneforge keys create): pages need a login with one."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            help="Playground: ask this running `tuneforge serve` (http://HOST:PORT), rate through it."
        ),
    ] = None,
    server_key: Annotated[
        str | None,
        typer.Option(
            envvar="TUNEFORGE_SERVER_KEY", help="With --server: the API key the playground asks with."
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            help="Playground without --server: the request log its answers and ratings go to (a database URL "
            "or SQLite file, e.g. a deployment's serve.log_db; default: the UI's tuneforge-ui.sqlite3)."
        ),
    ] = None,
) -> None:
    """Web pages over a workspace: runs with live curves, datasets, blind human A/B rating, a playground."""
    from tuneforge.ui.app import serve_ui

    serve_ui(workspace, host=host, port=port, keys_file=keys, server=server, server_key=server_key, log=log)


keys_app = typer.Typer(help="API keys of the server: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeysFile = Annotated[Path | None, typer.Option("--keys", help="Keys file (default: serve.keys_file).")]


def _key_file(path: Path | None) -> Any:
    from tuneforge.config import ServeConfig
    from tuneforge.serve.keys import KeyFile

    return KeyFile(path or ServeConfig().keys_file)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for.")],
    keys: KeysFile = None,
    reviewer: Annotated[
        bool, typer.Option("--reviewer", help="May rate and correct any request, not only its own.")
    ] = False,
) -> None:
    """A new API key; the key is printed once and only its hash is stored."""
    file = _key_file(keys)
    plain = file.create(name, reviewer=reviewer)
    role = " (reviewer: may give feedback on any request)" if reviewer else ""
    err_console.print(f"key {name!r}{role} created in {file.path}; it is shown once, store it now:")
    print(plain)


@keys_app.command("list")
def keys_list(keys: KeysFile = None) -> None:
    """Names, creation times and revocations (never the keys)."""
    table = Table()
    for col in ("name", "created", "revoked", "reviewer"):
        table.add_column(col)
    for k in _key_file(keys).load():
        table.add_row(k.name, k.created, k.revoked or "", "yes" if k.reviewer else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")], keys: KeysFile = None) -> None:
    """Revoke a key (a running server notices at its next request)."""
    _key_file(keys).revoke(name)
    console.print(f"revoked {name!r}")


@app.command("export-model")
def export_model(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write (a new one).")],
    merge: Annotated[
        bool, typer.Option(help="Merge the LoRA/DoRA/IA3 adapter into the base weights.")
    ] = True,
    dequantize: Annotated[
        bool, typer.Option("--dequantize", help="QLoRA: merge into the base loaded in full precision.")
    ] = False,
    to: Annotated[
        str,
        typer.Option("--to", help="hf (safetensors folder) or gguf (needs tuneforge\\[gguf] or llama.cpp)."),
    ] = "hf",
    gguf_type: Annotated[
        str | None,
        typer.Option(
            "--gguf-type", help="GGUF tensor type: f32, f16, bf16 or q8_0 (default: the converter's)."
        ),
    ] = None,
) -> None:
    """A run → a plain Hugging Face model folder (adapter merged), ready for transformers, vLLM or the hub."""
    from tuneforge.export.model import export_model as run_export

    manifest = run_export(run_dir, out, merge=merge, dequantize=dequantize, to=to, gguf_type=gguf_type)
    what = "merged" if manifest["merged"] else "copied"
    console.print(
        f"[green]exported[/green] {out}  ({manifest['method']} {what}; "
        f"probe logit difference {manifest['probe_max_abs_logit_diff']:.2g})"
    )
    if manifest.get("gguf"):
        console.print(f"GGUF for llama.cpp / Ollama: {Path(out) / manifest['gguf']}")


@app.command()
def monitor(
    run_dir: Annotated[Path, typer.Argument(help="The run whose deployment is monitored.")],
    log: Annotated[str, typer.Option("--log", help="The request log: serve.log_db's SQLite file or URL.")],
    since: Annotated[str | None, typer.Option(help="Window start, ISO 8601 in UTC (2026-12-06).")] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end (default: now, or --since + --window).")
    ] = None,
    window: Annotated[str, typer.Option(help="Window length when one end is open: 30m, 6h, 1d, 1w.")] = "1d",
    model: Annotated[str | None, typer.Option(help="Only requests to this served model name.")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 when an alert fires, one line per alert (for cron/CI).")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", help="A YAML file whose monitor: section replaces the run's.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="monitor.key=value, e.g. --set monitor.min_samples=50; data.path=DIR: the run's prepared "
            "dataset where it is now (a moved project).",
        ),
    ] = None,
) -> None:
    """Live traffic in the request log vs the run's training data → RUN/monitor/<window>/report.html."""
    from tuneforge.config import dataset_override
    from tuneforge.monitor import monitor as run_monitor
    from tuneforge.monitor import resolve_window
    from tuneforge.monitor.run import alert_line

    pointed, overrides = dataset_override(overrides)
    cfg = _monitor_config(run_dir, config, overrides)
    span = resolve_window(since, until, window)
    result, alerts, out = run_monitor(run_dir, log, span, cfg, model=model, data_path=pointed)
    if not result["enough_data"]:
        console.print(
            f"not enough data (n = {result['n']}, need ≥ {result['need']}): nothing judged in {span.name}",
            highlight=False,
        )
    elif check:
        for a in alerts:
            console.print(escape(alert_line(a.__dict__)), highlight=False, soft_wrap=True)
        if not alerts:
            console.print(f"no alert in {span.name}", highlight=False)
    else:
        for t in result["tests"].values():
            console.print(f"{t['name']}: {t['verdict']}", highlight=False)
    console.print(f"report: {out}", highlight=False, soft_wrap=True)
    if check and alerts and result["enough_data"]:
        raise typer.Exit(1)


def _monitor_config(run_dir: Path, config: Path | None, overrides: list[str] | None) -> Any:
    from tuneforge.artifacts import RunDir
    from tuneforge.config import load_config

    bad = [o for o in overrides or [] if not o.startswith("monitor.")]
    if bad:
        raise TuneforgeError(
            f"{bad[0]} is not a monitor option",
            where="--set",
            fix="use --set monitor.KEY=VALUE (or --set data.path=DIR for the run's dataset)",
        )
    source = config if config is not None else RunDir.open(run_dir).config_path
    cfg, _ = load_config(source, overrides)
    return cfg.monitor


feedback_app = typer.Typer(
    help="Feedback in the request log: export corrections as raw data.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    deployment_or_log: Annotated[
        str,
        typer.Argument(
            help="The serve config or run dir whose serve.log_db names the log, or the log (file or URL)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The folder to write (new, or an earlier export).")],
    since: Annotated[str | None, typer.Option(help="Feedback from this time on, ISO 8601 in UTC.")] = None,
    until: Annotated[str | None, typer.Option(help="Feedback before this time (default: now).")] = None,
    min_rating: Annotated[
        int,
        typer.Option(help="With --include-good: the lowest rating that counts as good (4 on a 1-5 scale)."),
    ] = 1,
    include_good: Annotated[
        bool, typer.Option("--include-good", help="Also take answers rated good (as they were given).")
    ] = False,
    split: Annotated[
        str | None,
        typer.Option(help="Add split=NAME to every row (to prepare it beside a frozen test split)."),
    ] = None,
) -> None:
    """Corrections given with feedback (and good answers) → raw data files for `tuneforge prepare`."""
    from datetime import UTC, datetime

    from tuneforge.monitor.feedback import export_feedback
    from tuneforge.monitor.window import parse_time

    if split is not None and split not in ("train", "validation", "test"):
        raise TuneforgeError(
            f"{split!r} is not a split", where="--split", fix="use train, validation or test"
        )
    start = parse_time(since, "--since") if since else datetime(1970, 1, 1, tzinfo=UTC)
    end = parse_time(until, "--until") if until else datetime.now(UTC)
    if not start < end:
        raise TuneforgeError("the window ends before it starts", where="--since/--until", fix="swap them")
    result = export_feedback(
        deployment_or_log, out, start, end, min_rating=min_rating, include_good=include_good, split=split
    )
    for name, n in sorted(result.counts.items()):
        console.print(f"{n} examples -> {out / name}", highlight=False, soft_wrap=True)
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(result.skipped.items()))
    console.print(
        f"{result.feedback_rows} feedback rows read; skipped: {skipped or 'none'}; see {out / 'export.json'}",
        highlight=False,
        soft_wrap=True,
    )
    if not result.counts:
        console.print("no corrections in this window: nothing to prepare", highlight=False)


registry_app = typer.Typer(
    help="Registered versions of a model, the champion and its history.", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")
RegistryRoot = Annotated[
    Path,
    typer.Option("--root", envvar="TUNEFORGE_REGISTRY", help="The folder holding the registries."),
]
RegistryName = Annotated[str, typer.Argument(help="The registry (the model's name).")]
Reason = Annotated[str, typer.Option("--reason", help="Why: kept in the registry's history.")]


def _registry(root: Path, name: str) -> Any:
    from tuneforge.registry import Registry

    return Registry.at(root, name)


@registry_app.command("register")
def registry_register(
    name: RegistryName,
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    root: RegistryRoot = Path("registry"),
    reason: Reason = "",
) -> None:
    """A finished run → the registry's next version (not the champion until promoted)."""
    record = _registry(root, name).register(run_dir, reason)
    console.print(f"registered {name} version {record['version']}: {record['run']}", highlight=False)


@registry_app.command("list")
def registry_list(root: RegistryRoot = Path("registry")) -> None:
    """Every registry: its versions and its champion."""
    from tuneforge.registry import registries

    table = Table()
    for col in ("registry", "versions", "champion"):
        table.add_column(col)
    for reg in registries(root):
        champ = reg.champion()
        table.add_row(reg.name, str(len(reg.versions())), str(champ["version"]) if champ else "none")
    console.print(table)


@registry_app.command("show")
def registry_show(name: RegistryName, root: RegistryRoot = Path("registry")) -> None:
    """A registry's versions (with their eval numbers) and the history of its champion."""
    reg = _registry(root, name)
    reg._require()
    champ = reg.champion()
    table = Table(title=f"{name}: champion {champ['version'] if champ else 'none'}")
    for col in ("version", "run", "registered", "eval", "data"):
        table.add_column(col, overflow="fold" if col == "run" else "ellipsis")  # the run's path in full
    for v in reg.versions():
        evals = "; ".join(
            f"{split}: " + ", ".join(f"{k} {x:.4g}" for k, x in list(m.items())[:3])
            for split, m in v["eval"].items()
        )
        mark = " *" if champ and champ["version"] == v["version"] else ""
        table.add_row(
            f"{v['version']}{mark}",
            str(reg.run_path(v)),  # where the run is now (a workspace moved whole)
            v["registered"],
            evals,
            str(v["data_fingerprint"] or ""),
        )
    console.print(table)
    for h in reg.history():
        print_wrapped(f"{h['time']}  {h['action']} {h['version']}  {h.get('reason') or ''}".rstrip(), hang=4)


@registry_app.command("promote")
def registry_promote(
    name: RegistryName,
    version: Annotated[int, typer.Argument(help="The version to make the champion.")],
    reason: Reason,
    root: RegistryRoot = Path("registry"),
) -> None:
    """Make a version the champion (the pointer switches atomically; the history records why)."""
    pointer = _registry(root, name).promote(version, reason)
    console.print(f"{name}: champion is now version {pointer['version']}", highlight=False)


@registry_app.command("rollback")
def registry_rollback(name: RegistryName, reason: Reason, root: RegistryRoot = Path("registry")) -> None:
    """Give the championship back to the previous champion."""
    pointer = _registry(root, name).rollback(reason)
    console.print(f"{name}: champion is back to version {pointer['version']}", highlight=False)


@registry_app.command("sync")
def registry_sync(name: RegistryName, root: RegistryRoot = Path("registry")) -> None:
    """Mirror the registry to the MLflow Model Registry at $TUNEFORGE_REGISTRY_MLFLOW (versions and aliases).

    Every register/promote/rollback mirrors itself while the variable is set; this catches up a registry
    that was changed before it was set, or while MLflow could not be reached.
    """
    numbers = _registry(root, name).sync_mirror()
    pairs = ", ".join(f"{n} -> {m}" for n, m in numbers.items()) or "none"
    console.print(
        f"{name}: mirrored to MLflow (tuneforge version -> MLflow version: {pairs})", highlight=False
    )


@app.command()
def retrain(
    config: ConfigArg,
    registry: Annotated[str, typer.Option("--registry", help="The registry whose champion is retrained.")],
    overrides: Overrides = None,
    root: RegistryRoot = Path("registry"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be trained on, and write nothing.")
    ] = False,
) -> None:
    """Champion's data + retrain.data → a challenger, promoted only if better (live data may veto)."""
    from tuneforge.config import load_config
    from tuneforge.retrain import plan_retrain
    from tuneforge.retrain import retrain as run_retrain

    cfg, source = load_config(config, overrides)
    reg = _registry(root, registry)
    if dry_run:
        plan = plan_retrain(reg, cfg)
        champ = plan.champion
        console.print(
            f"champion: {registry} version {champ.number} ({champ.run.path}), {plan.format} data",
            highlight=False,
            soft_wrap=True,
        )
        for s in plan.sources:
            console.print(f"  {s.name}  {s.split}: {s.rows} rows", highlight=False, soft_wrap=True)
        console.print(
            f"frozen test split: {champ.dataset.split_path('test')} (fingerprint {plan.frozen_test[:16]})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            "rows as read: cleaning, deduplication and the leakage check run when it is trained; "
            "nothing was written",
            highlight=False,
        )
        return
    out = run_retrain(reg, cfg, source)
    d = out.decision
    verb = "promoted: champion is now" if d.promote else "registered, not promoted:"
    console.print(f"{registry}: {verb} version {out.version}", highlight=False)
    console.print(f"decision: {escape(d.reason)}", highlight=False, soft_wrap=True)
    console.print(f"  {escape(d.test['verdict'])}", highlight=False, soft_wrap=True)
    if d.live is not None:
        console.print(
            f"live held-out ({d.live['n']} examples): {escape(d.live['verdict'])}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"report: {out.report.with_suffix('.md')}", highlight=False, soft_wrap=True)


def print_comparison(result: dict[str, Any]) -> None:
    """Base vs tuned metrics as a table (3 significant digits, as the report prints them)."""
    from tuneforge.evaluation.stats import sig

    tuned, base = result.get("tuned", {}), result.get("base")
    # The classical baselines on the same examples sit beside the models, so a tuned model that loses to a
    # one-second TF-IDF model shows it here, not only in the report.
    others = {n: b["metrics"] for n, b in (result.get("baselines") or {}).items() if b.get("metrics")}
    name = result.get("evaluation") or result.get("split")
    table = Table(title=f"evaluation {name}: {result.get('n')} examples of the {result.get('split')} split")
    table.add_column("metric")
    if base is not None:
        table.add_column("base")
    table.add_column("tuned")
    for other in others:
        table.add_column(other.replace("_", " "), style="dim")
    keys = [
        k
        for k in (
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "ece",
            "unparseable_rate",
            "loss",
            "perplexity",
            "mse",
            "mae",
            "r2",
            "bleu",
            "chrf",
            "ter",
            "rougeL",
            "exact_match",
            "token_f1",
            "length_ratio",
        )
        if k in tuned
    ]
    for label in result.get("labels") or []:
        if label in tuned.get("per_class", {}):
            keys.append(f"f1 {label}")
    for key in keys:

        def value(m: dict[str, Any], key: str = key) -> str:
            if key.startswith("f1 "):
                per_class = m.get("per_class", {}).get(key[3:])
                return "-" if per_class is None else f"{per_class['f1']:.3f}"
            if key not in m:
                return "-"  # e.g. a baseline's calibration: it gives labels, not probabilities
            return sig(m[key]) if isinstance(m.get(key), float) else str(m.get(key))

        row = [key] + ([value(base)] if base is not None else []) + [value(tuned)]
        row += [value(m) for m in others.values()]
        table.add_row(*row)
    console.print(table)


def print_verdicts(result: dict[str, Any]) -> None:
    """The paired tests' verdicts and the baselines beside the table."""
    # Each line names what the tuned model is compared with: "no evidence of a difference" alone does not.
    for metric, test in (result.get("paired") or {}).items():
        if metric in ("accuracy", "mse", "perplexity", "token_f1", "chrf"):
            print_wrapped(f"vs base: {test['verdict']}", indent=2)
    for name, b in (result.get("baselines") or {}).items():  # their numbers are columns of the table
        if b.get("vs_tuned", {}).get("verdict"):
            print_wrapped(f"vs {name}: {b['vs_tuned']['verdict']}", indent=2)
    few = result.get("few_shot") or {}
    if few.get("name"):
        print_wrapped(
            f"{few['name']}: the base prompted with {few['k']} train examples (k: {few['k_chosen']}); "
            f"{few.get('seconds')} s, eval.few_shot=0 turns it off",
            indent=2,
        )
    elif few.get("skipped"):
        print_wrapped(f"few-shot baseline: {few['skipped']}", indent=2)
    for column, f in (result.get("fairness") or {}).items():
        for warning in f.get("warnings", []):
            print_wrapped(f"warning ({column}): {warning}", indent=2)


def main() -> None:
    try:
        app()
    except TuneforgeError as err:
        # Escaped: messages hold literal brackets ("[invalid_json]") that rich would take for markup and drop.
        # soft_wrap: a message in a log file stays whole on its lines (the terminal wraps it for the eye).
        err_console.print(
            f"[bold red]error:[/bold red] {escape(err.render())}",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
