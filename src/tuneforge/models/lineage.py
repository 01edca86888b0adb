"""A finished run as the starting point of another (DPO on top of an SFT run): find it, load it, keep it as
the reference.

`model.name: runs/chat` or `train.init_from: runs/chat` names a finished run; what it produced is the start:

- A full fine-tune: its final/ folder is a whole model, so it simply becomes the base (`model.name`); any
  method applies on top, and DPO's reference (the adapter switched off, or the table taken before step 1) is
  the SFT model by construction.
- An adapter run: the new run loads the same base and continues the run's adapter (trainable), with a second,
  frozen copy of that adapter loaded under the name `reference`; DPO's reference forward switches to that copy
  (`reference_model`), which is the SFT model exactly. This is TRL's `ref_adapter_name` option. It is chosen
  over "merge the adapter into the base in memory and put a fresh adapter on top" because the DPO result then
  stays one adapter on the original base, which evaluate, serve (several adapters on one base, vLLM) and
  export load unchanged; a fresh adapter on a merged model would need a model that exists nowhere on disk.
  The cost is one more adapter in memory (a LoRA is well under 1% of the model) and its forward in the
  reference pass. `method.name: full` instead merges the adapter into the base and trains every weight (the
  reference table is then taken from the merged SFT model before step 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.artifacts import MANIFEST, RunDir
from tuneforge.config import ConfigSource, RunConfig, config_from_dict
from tuneforge.errors import TuneforgeError

#: The name of the frozen copy of the parent's adapter (DPO's reference) next to the trained one ("default").
REFERENCE = "reference"


@dataclass(frozen=True)
class Parent:
    """A finished run a new run starts from."""

    run: RunDir
    manifest: dict[str, Any]
    config: RunConfig

    @property
    def saves_adapter(self) -> bool:
        return bool(self.manifest.get("saves_adapter", True))

    def start_model(self) -> str:
        """The model the new run loads: the parent's own base (adapter runs) or its whole final/ model."""
        if not self.saves_adapter:
            return str(self.run.final.resolve())
        from tuneforge import builtin

        name = str(self.manifest.get("base_model") or "")
        if builtin.is_builtin(name):
            return name
        return str(Path(self.manifest["base_model_path"]).expanduser().resolve())

    def lineage(self) -> dict[str, Any]:
        """What the new run's manifest records about where it started (`parent`)."""
        m = self.manifest
        dataset = m.get("dataset") or {}
        return {
            "run": str(self.run.path.resolve()),
            "final": str(self.run.final.resolve()),
            "base_model": m.get("base_model"),
            "method": m.get("method"),
            "objective": m.get("objective", "supervised"),
            "saves_adapter": self.saves_adapter,
            "step": m.get("step"),
            "config_fingerprint": m.get("config_fingerprint"),
            "dataset": {k: dataset.get(k) for k in ("path", "fingerprint", "format")},
        }


def is_run_folder(name: str) -> bool:
    path = Path(name).expanduser()
    return path.is_dir() and RunDir.is_run(path)


def not_a_model(path: Path, where: str) -> TuneforgeError:
    """The one error for a folder that is neither a model folder nor a tuneforge run."""
    run = next((p for p in (path.parent, path.parent.parent) if RunDir.is_run(p)), None)
    if run is not None:
        return TuneforgeError(
            f"{path} is a folder inside run {run}, not a model folder",
            where=where,
            fix=f"name the run itself to start from what it trained: model.name: {run} (or train.init_from)",
        )
    return TuneforgeError(
        f"{path} is neither a model folder (no config.json) nor a tuneforge run (no {MANIFEST} of a run)",
        where=where,
        fix="pass a Hugging Face model folder (config.json, safetensors weights, tokenizer), a built-in "
        "(builtin:...), a hub id, or the output_dir of a finished `tuneforge train` run",
    )


def open_parent(name: str, where: str) -> Parent:
    """The finished run at `name`, or one clear error."""
    import yaml

    path = Path(name).expanduser()
    if not path.is_dir():
        raise TuneforgeError(
            f"run folder {path} does not exist", where=where, fix="pass the folder of a finished run"
        )
    if not RunDir.is_run(path):
        raise not_a_model(path, where)
    run = RunDir(path)
    manifest = run.manifest
    if manifest.get("status") != "completed" or not run.final.is_dir():
        raise TuneforgeError(
            f"run {path} has not finished training (status: {manifest.get('status', 'unknown')}), so it "
            "cannot be a starting point",
            where=where,
            fix=f"finish it first: tuneforge train {run.config_path} --resume",
        )
    if manifest.get("method") == "head":
        raise TuneforgeError(
            f"run {path} trained only a linear head on a frozen base model, so it cannot be a starting point",
            where=where,
            fix=f"start from its base model instead: model.name={manifest.get('base_model')}",
        )
    raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    return Parent(run, manifest, config_from_dict(raw, ConfigSource(run.config_path)))


def _given(source: ConfigSource, key: str) -> bool:
    return source.given is None or key in source.given


def start_from_run(cfg: RunConfig, source: ConfigSource) -> tuple[RunConfig, ConfigSource, Parent | None]:
    """Rewrite a config that starts from a run (`model.name` or `train.init_from`) into one naming a model.

    The result names the model the run loads (`Parent.start_model`), the parent's method for an adapter that
    continues (its options come from the adapter), the parent's model settings the user left unset (its chat
    template above all: the SFT model learned it), and `train.init_from`. Everything downstream (prepare,
    estimate, defaults, the recorded config) then sees an ordinary model; only the model loading adds the
    parent's adapter (`continue_adapter`).
    """
    init_from, model_name = cfg.train.init_from, cfg.model.name
    model_is_run = is_run_folder(model_name)
    if init_from is None and not model_is_run:
        folder = Path(model_name).expanduser()
        if folder.is_dir() and not (folder / "config.json").is_file():  # before prepare reads its tokenizer
            raise not_a_model(folder, source.where("model.name"))
        return cfg, source, None
    where = source.where("train.init_from" if init_from is not None else "model.name")
    named = init_from if init_from is not None else model_name
    parent = open_parent(named, where)
    start = parent.start_model()
    if init_from is not None and source.given is not None and "model.name" in source.given:
        same = model_is_run and Path(model_name).expanduser().resolve() == parent.run.path.resolve()
        if not same and model_name != start and model_name != parent.manifest.get("base_model"):
            raise TuneforgeError(
                f"model.name {model_name!r} is not the model run {parent.run.path} starts from ({start})",
                where=source.where("model.name"),
                fix="leave model.name out when train.init_from names a run (or name the run there)",
            )
    if parent.manifest.get("task") != cfg.model.task:
        raise TuneforgeError(
            f"run {parent.run.path} trained a {parent.manifest.get('task')} model; this config asks for "
            f"model.task {cfg.model.task}",
            where=source.where("model.task"),
            fix=f"set model.task: {parent.manifest.get('task')}, or start from another run",
        )
    raw = cfg.to_dict()
    parent_raw = parent.config.to_dict()
    # Model settings: the parent's, except where this config set its own.
    model = dict(parent_raw["model"])
    for key, value in raw["model"].items():
        # A config built in code counts every key as set, but a missing chat template is the parent's.
        mine = f"model.{key}" in source.given if source.given is not None else value is not None
        if mine or (source.given is None and key != "chat_template"):
            model[key] = value
    model["name"] = start
    raw["model"] = model
    keys = {"model.name", "train.init_from"} | {f"model.{k}" for k in model}
    if parent.saves_adapter:
        raw["method"], method_keys = _continued_method(cfg, source, parent)
        keys |= method_keys
    raw["train"]["init_from"] = named
    out = config_from_dict(raw, source)
    return out, source.with_given(keys), parent


def _continued_method(
    cfg: RunConfig, source: ConfigSource, parent: Parent
) -> tuple[dict[str, Any], set[str]]:
    """The method section of a run that starts from an adapter run: the parent's adapter continues.

    `method.name: full` is the one other choice: the adapter is merged into the base, every weight trains.
    """
    mine, theirs = cfg.method, parent.config.method
    name_given = _given(source, "method.name")
    if name_given and mine.name == "full":
        return {"name": "full", **mine.options()}, {"method.name"}
    if name_given and mine.name != theirs.name:
        raise TuneforgeError(
            f"run {parent.run.path} trained a {theirs.name} adapter, which this run continues; "
            f"method.name {mine.name} cannot continue it",
            where=source.where("method.name"),
            fix=f"leave method out (or write method.name: {theirs.name}); method.name: full merges the "
            "adapter into the base and trains every weight",
        )
    if source.given is not None:
        for key, value in mine.options().items():
            if f"method.{key}" in source.given and theirs.options().get(key) != value:
                raise TuneforgeError(
                    f"method.{key}={value!r} differs from the adapter of run {parent.run.path} "
                    f"({key}={theirs.options().get(key)!r}), which this run continues as it is",
                    where=source.where(f"method.{key}"),
                    fix=f"leave method.{key} out: the adapter's own settings apply",
                )
    section = {"name": theirs.name, **theirs.options()}
    return section, {f"method.{k}" for k in section}


def continue_adapter(model: Any, parent: Parent, *, reference: bool, prepare: Any = None) -> Any:
    """The base `model` with the parent's adapter as the trainable one, and (`reference`) its frozen copy.

    `prepare(model)`: what the method does to the base before an adapter goes on (QLoRA's k-bit preparation).
    """
    from peft import PeftModel

    from tuneforge.models.integrity import check_weights

    check_weights(
        parent.run.final,
        what=f"the adapter of run {parent.run.path}",
        fix="the file was cut short or changed after training: copy the run again, or train it again",
    )
    if prepare is not None:
        model = prepare(model)
    peft_model = PeftModel.from_pretrained(model, str(parent.run.final), is_trainable=True)
    if reference:
        add_reference(peft_model, parent.run.final)
    return peft_model


def merged_adapter(model: Any, parent: Parent) -> Any:
    """The base `model` with the parent's adapter merged into its weights (a whole SFT model, no adapter)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(parent.run.final)).merge_and_unload()


def add_reference(peft_model: Any, folder: Path) -> None:
    """Load `folder`'s adapter again, frozen, as `REFERENCE`; the trained adapter stays the active one."""
    was_training = peft_model.training
    with _same_adapter(peft_model):
        peft_model.load_adapter(str(folder), adapter_name=REFERENCE, is_trainable=False)
    peft_model.train(was_training)  # PEFT puts the model in eval mode when it loads a frozen adapter


@contextlib.contextmanager
def _same_adapter(model: Any) -> Iterator[None]:
    """Afterwards, the same adapter active and exactly the same parameters trainable as before."""
    active = model.active_adapter
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    try:
        yield
    finally:
        model.set_adapter(active)
        # set_adapter marks the active adapter trainable and the others frozen; put back exactly what was.
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)


def has_reference(model: Any) -> bool:
    return REFERENCE in (getattr(model, "peft_config", None) or {})


@contextlib.contextmanager
def reference_model(model: Any) -> Iterator[None]:
    """The model as DPO's reference while inside: the frozen parent adapter active, or every adapter off."""
    if not has_reference(model):
        with model.disable_adapter():
            yield
        return
    with _same_adapter(model):
        model.set_adapter(REFERENCE, inference_mode=True)
        yield


def drop_reference(model: Any) -> None:
    """Remove the frozen copy before the result is saved: final/ holds the trained adapter only."""
    if has_reference(model):
        model.delete_adapter(REFERENCE)
