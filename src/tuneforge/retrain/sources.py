"""What a challenger learns from: the champion's prepared splits (test split frozen) and the new raw files.

Everything goes through `prepare` once, as one raw JSON Lines source whose `tuneforge_split` column keeps
every champion row in the split it had (data.split_column): the champion's test rows stay the test split, so
prepare's leakage check drops any new row that duplicates one of them, and its deduplication keeps the test
copy of a duplicate (the higher split wins). New rows go to train, except the held-out part of live
corrections. Columns are renamed to the record fields here; validating, cleaning and counting the rows is
prepare's job, not this module's.

Live corrections are a `tuneforge feedback export` folder (or a file in one) named in retrain.data. Their rows
are split, seeded and stratified by label (`data.split.split_indices`, exact copies kept together), into a
train part and a held-out part of retrain.live_holdout. The held-out rows join the test split, so prepare's
deduplication and leakage check treat them exactly like the frozen test rows (no training row equal or near
to one survives), and they stay in the challenger's test split: once held out, a row is never trained on by
any later generation either, which keeps every later comparison on it fair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.artifacts import SPLITS, DatasetDir, RunDir, atomic_file
from tuneforge.config import DataConfig, RunConfig
from tuneforge.data.dedup import normalize_for_matching
from tuneforge.data.records import FIELDS, OPTIONAL, config_key
from tuneforge.data.sources import read_rows
from tuneforge.data.split import split_indices
from tuneforge.errors import TuneforgeError
from tuneforge.monitor.feedback import FILES as EXPORT_FILES
from tuneforge.monitor.feedback import KIND as EXPORT_KIND
from tuneforge.registry import Registry, registries

SPLIT_COLUMN = "tuneforge_split"
ORIGIN_COLUMN = "tuneforge_origin"  # where a row came from; rejected.jsonl shows it beside a dropped row
GROUP = "group"  # the field a prepared record keeps its data.group_column value in
HELD_OUT = "live held-out (test)"
"""The split a source count shows for the held-out part of live corrections (their rows go to test)."""
DROPPED = "dropped (data.on_error: drop)"
"""The split a source count shows for unreadable rows left out as the champion's data.on_error says."""
# The export file that holds each record format's corrections (an export writes one file per endpoint).
EXPORT_FILE_OF = {
    "classification": EXPORT_FILES["classify"],
    "regression": EXPORT_FILES["classify"],
    "chat": EXPORT_FILES["chat"],
    "instruction": EXPORT_FILES["completion"],
}


@dataclass(frozen=True)
class Champion:
    """The registry's champion: its version record, its run, and the dataset that run trained on."""

    version: dict[str, Any]
    run: RunDir
    dataset: DatasetDir

    @property
    def number(self) -> int:
        return int(self.version["version"])


def champion_of(reg: Registry) -> Champion:
    """The champion with its run and dataset, each missing piece one clear error."""
    if not reg.exists():
        known = ", ".join(r.name for r in registries(reg.path.parent)) or "none"
        raise TuneforgeError(
            f"there is no registry {reg.name!r} in {reg.path.parent} (registries there: {known})",
            fix="name an existing registry with --registry (and --root), or register a run first: "
            f"tuneforge registry register {reg.name} RUN",
        )
    if not reg.versions():
        raise TuneforgeError(
            f"registry {reg.name!r} has no versions: there is no champion to retrain",
            where=str(reg.path),
            fix=f"register and promote a run first: tuneforge registry register {reg.name} RUN, "
            f"then tuneforge registry promote {reg.name} 1 --reason ...",
        )
    pointer = reg.champion()  # a corrupt pointer is its own error (registry.py)
    if pointer is None:
        raise TuneforgeError(
            f"registry {reg.name!r} has no champion: no version was ever promoted",
            where=str(reg.pointer),
            fix=f"promote the version to retrain from: tuneforge registry promote {reg.name} N --reason ...",
        )
    version = reg.version(pointer["version"])
    path = reg.run_path(version)
    if not RunDir.is_run(path):
        raise TuneforgeError(
            f"the champion's run {path} (version {version['version']} of {reg.name!r}) is missing",
            fix="restore the run directory, or promote a version whose run still exists",
        )
    run = RunDir(path)
    # No data.path=DIR here: its test split is the frozen test set of every retrain, so it is restored.
    dataset = run.open_dataset(point=None)
    run.check_split_files(dataset)  # the very splits the champion trained and was tested on
    return Champion(version, run, dataset)


def split_fingerprint(path: Path) -> str:
    """sha256 of a split's records in sorted order: the same rows give the same value, in any file order.

    prepare writes each record as one JSON line, the same bytes for the same record, so sorted lines compare
    record sets without parsing them (each retrain's prepare shuffles the test rows anew).
    """
    h = hashlib.sha256()
    for line in sorted(path.read_bytes().splitlines()):
        h.update(line + b"\n")
    return h.hexdigest()


@dataclass
class SourceCount:
    """One input of the new dataset and its rows, as read (before cleaning, dedup and the leakage check)."""

    name: str
    split: str
    rows: int


@dataclass
class Plan:
    """What the challenger would learn from: the champion's splits and the new files, as read."""

    champion: Champion
    format: str
    sources: list[SourceCount] = field(default_factory=list)
    frozen_test: str = ""
    """split_fingerprint of the champion's test split."""
    live: list[str] = field(default_factory=list)
    """The retrain.data locations that are live corrections (feedback exports)."""
    held_out: int = 0
    """Live rows put in the held-out part, as read (prepare may still merge copies of test rows)."""


def _record_columns(fmt: str) -> dict[str, str]:
    """data.*_column settings that read prepared records back: each field's column is its own name."""
    return {config_key(f): f for f in FIELDS[fmt] if config_key(f) in DataConfig.model_fields}


def _champion_rows(champion: Champion) -> Iterator[tuple[str, dict[str, Any]]]:
    for split in SPLITS:
        path = champion.dataset.split_path(split)
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                yield (
                    split,
                    {
                        **json.loads(line),
                        SPLIT_COLUMN: split,
                        ORIGIN_COLUMN: f"champion v{champion.number} {path.name}:{i}",
                    },
                )


def _export_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "export.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == EXPORT_KIND else None


def live_file(location: str, fmt: str) -> Path | None:
    """The file of `fmt` corrections when `location` is a feedback export (or a file in one), else None.

    An export folder holds one file per endpoint and its export.json; only the champion's format is data.
    """
    path = Path(location)
    if path.is_dir() and _export_manifest(path) is not None:
        name = EXPORT_FILE_OF.get(fmt)
        if name is None or not (path / name).is_file():
            raise TuneforgeError(
                f"the feedback export {location} has no {name or 'file of'} {fmt} corrections "
                f"(it has: {', '.join(sorted(p.name for p in path.glob('*.jsonl'))) or 'none'})",
                where="retrain.data",
                fix="export feedback from a deployment of this model, or leave the folder out",
            )
        return path / name
    if path.is_file() and _export_manifest(path.parent) is not None:
        return path
    return None


def _new_rows(location: str, cfg: DataConfig, fmt: str) -> Iterator[dict[str, Any] | None]:
    """The rows of one retrain.data source, their columns renamed to the record fields of `fmt`; None for a
    row that cannot be read where data.on_error is drop (as `prepare` drops it), an error otherwise."""
    from tuneforge.data.records import resolve_columns

    location = str(live_file(location, fmt) or location)
    read_cfg = cfg.model_copy(update={"path": location, "format": fmt, "split_column": None, "source": None})
    mapping: dict[str, str] | None = None
    for row in read_rows(location, read_cfg):
        if row.problem:
            if cfg.on_error == "drop":
                yield None
                continue
            raise TuneforgeError(
                f"{row.problem[1]} ({row.problem[0]})",
                where=f"retrain.data: {row.where}",
                fix="fix the row, set data.on_error=drop to leave such rows out, or leave the file out of "
                "retrain.data",
            )
        if mapping is None:
            mapping = resolve_columns(list(row.fields), fmt, read_cfg)
            need = [c for f, c in mapping.items() if f not in OPTIONAL]
            if not all(c in row.fields for c in need):
                raise TuneforgeError(
                    f"{location} has the columns {list(row.fields)}; the champion's {fmt} data needs "
                    f"{', '.join(need)}",
                    where="retrain.data",
                    fix="name its columns with data.*_column (e.g. data.text_column), or export it as "
                    f"{fmt} data",
                )
        out = {f: row.fields[c] for f, c in mapping.items() if c in row.fields}
        if cfg.group_column is not None and cfg.group_column in row.fields:
            out[GROUP] = row.fields[cfg.group_column]
        out[SPLIT_COLUMN] = "train"
        out[ORIGIN_COLUMN] = row.where
        yield out


def _held_out(rows: list[dict[str, Any]], fmt: str, fraction: float, seed: int) -> set[int]:
    """Indices of the live rows held out: seeded, stratified by label, exact copies on one side."""
    if fraction <= 0 or not rows:
        return set()
    strata = [str(r.get("label")) if fmt == "classification" else "" for r in rows]
    # Grouped by the text prepare matches duplicates on, so two copies never straddle train and held-out.
    groups = [normalize_for_matching(str(r.get("text", json.dumps(r, sort_keys=True)))) for r in rows]
    return set(split_indices(strata, (1 - fraction, 0.0, fraction), seed, groups)["test"])


def _all_rows(plan: Plan, cfg: RunConfig) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(source name, split shown, row) of every input row, champion's first; a dropped row is None."""
    name = f"champion v{plan.champion.number}"
    for split, row in _champion_rows(plan.champion):
        yield name, split, row
    for location in cfg.retrain.data:
        if location not in plan.live:
            for new in _new_rows(location, cfg.data, plan.format):
                yield (location, "train", new) if new is not None else (location, DROPPED, None)
            continue
        read = list(_new_rows(location, cfg.data, plan.format))  # an export: corrections, not a corpus
        for _ in range(read.count(None)):
            yield location, DROPPED, None
        rows = [r for r in read if r is not None]
        held = _held_out(rows, plan.format, cfg.retrain.live_holdout, cfg.train.seed)
        for i, row in enumerate(rows):
            if i in held:
                yield location, HELD_OUT, {**row, SPLIT_COLUMN: "test"}
            else:
                yield location, "train", row


def plan_sources(champion: Champion, cfg: RunConfig) -> Plan:
    """Count what the challenger would learn from (reading every input once, writing nothing)."""
    for location in cfg.retrain.data:
        if not Path(location).exists():
            raise TuneforgeError(
                f"{location} does not exist", where="retrain.data", fix="name files or folders that exist"
            )
    plan = Plan(champion, champion.dataset.format)
    plan.frozen_test = split_fingerprint(champion.dataset.split_path("test"))
    plan.live = [loc for loc in cfg.retrain.data if live_file(loc, plan.format) is not None]
    counts: dict[tuple[str, str], int] = {}
    for name, split, _ in _all_rows(plan, cfg):
        counts[(name, split)] = counts.get((name, split), 0) + 1
    plan.sources = [SourceCount(name, split, n) for (name, split), n in counts.items()]
    plan.held_out = sum(s.rows for s in plan.sources if s.split == HELD_OUT)
    return plan


def write_sources(plan: Plan, cfg: RunConfig, out: Path) -> int:
    """Write every input row into one JSON Lines file (atomically); returns its number of rows."""
    n = 0
    with atomic_file(out, "w") as f:
        for _, _, row in _all_rows(plan, cfg):
            if row is not None:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    return n


def _has_groups(dataset: DatasetDir) -> bool:
    """Whether the records carry a group (the champion was prepared with a data.group_column)."""
    with open(dataset.split_path("train"), encoding="utf-8") as f:
        first = f.readline()
    return bool(first) and GROUP in json.loads(first)


def data_config(plan: Plan, cfg: RunConfig, source: Path, output_dir: Path) -> DataConfig:
    """The data section that prepares `source`: the config's cleaning and limits, the record columns.

    A classifier's label set is the champion's: a challenger with another head could not be compared.
    """
    columns = {config_key(f): None for fields in FIELDS.values() for f in fields}
    columns = {k: v for k, v in columns.items() if k in DataConfig.model_fields}
    labels = plan.champion.dataset.labels if plan.format == "classification" else cfg.data.labels
    return cfg.data.model_copy(
        update={
            **columns,
            **_record_columns(plan.format),
            "path": str(source),
            "output_dir": str(output_dir),
            "source": "jsonl",
            "format": plan.format,
            "split_column": SPLIT_COLUMN,
            "group_column": GROUP if _has_groups(plan.champion.dataset) else None,
            "labels": labels or None,
            "max_rows": None,
        }
    )


def check_frozen_test(plan: Plan, dataset: DatasetDir) -> None:
    """The new dataset's test split must hold every champion test row unchanged (prepare could drop one),
    and nothing else but live held-out rows."""
    old = sorted(plan.champion.dataset.split_path("test").read_bytes().splitlines())
    new = sorted(dataset.split_path("test").read_bytes().splitlines())
    lost, added = len(set(old) - set(new)), len(set(new) - set(old))
    if lost == 0 and (added == 0 or plan.held_out > 0):
        return
    raise TuneforgeError(
        f"preparing the new data changed the champion's frozen test split ({lost} of its {len(old)} rows "
        f"lost, {added} changed or added): champion and challenger would not be tested on the same rows",
        where=str(dataset.path),
        fix="see the dataset's report and rejected.jsonl: a new row giving a test text another label is a "
        "label conflict (set data.label_conflicts: keep to keep the test copy), a cleaning step that "
        "changes cleaned text again (e.g. data.clean.strip_html) must match the champion's",
    )


def live_held_out(plan: Plan, dataset: DatasetDir) -> list[dict[str, Any]]:
    """The new test split's rows that are not the champion's: the live held-out part, as prepared.

    A held-out row equal to a champion test row was merged into it by deduplication: that row is judged on
    the frozen side already, and a row the champion itself held out before is not new evidence either.
    """
    if not plan.live:
        return []
    old = set(plan.champion.dataset.split_path("test").read_bytes().splitlines())
    lines = dataset.split_path("test").read_bytes().splitlines()
    return [json.loads(line) for line in lines if line not in old]
