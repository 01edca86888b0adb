"""The data-preparation pipeline: read → validate → clean → deduplicate → split → write (atomically)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tuneforge import __version__, builtin
from tuneforge.artifacts import DatasetDir, atomic_dir, sha256_file, write_json_atomic, write_jsonl
from tuneforge.config import DataConfig
from tuneforge.data.clean import clean_record
from tuneforge.data.dedup import exact_duplicates
from tuneforge.data.records import RowProblem, detect_format, record_text, resolve_columns, to_record
from tuneforge.data.sources import describe_source, read_rows
from tuneforge.data.split import SPLIT_NAMES, split_indices
from tuneforge.errors import TuneforgeError

MAX_LISTED_PROBLEMS = 20


def default_output_dir(cfg: DataConfig) -> Path:
    assert cfg.path is not None
    return Path(cfg.output_dir) if cfg.output_dir else Path("datasets") / Path(cfg.path.rstrip("/")).stem


def input_fingerprint(cfg: DataConfig) -> tuple[str, list[dict[str, str]]]:
    """Content hash of the sources and the data config: the same inputs give the same fingerprint."""
    assert cfg.path is not None
    files = [{"path": str(p), "sha256": sha256_file(p)} for p in describe_source(cfg.path, cfg).files]
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(json.dumps(cfg.model_dump(mode="json", exclude={"output_dir"}), sort_keys=True).encode())
    for f in files:
        h.update(f["sha256"].encode())
    return h.hexdigest(), files


def prepare_dataset(cfg: DataConfig, *, force: bool = False) -> DatasetDir:
    """Turn `cfg.path` into a dataset directory; reuse an existing one whose inputs are unchanged."""
    if cfg.path is None:
        raise TuneforgeError("no data given", where="data.path", fix="set data.path to your data file or folder")
    if builtin.is_builtin(cfg.path):
        cfg = cfg.model_copy(update={"path": str(builtin.resolve_data(cfg.path))})
        if cfg.output_dir is None:
            cfg.output_dir = str(Path("datasets") / "demo-tweets")
    assert cfg.path is not None
    src = Path(cfg.path)
    if DatasetDir.is_dataset(src):
        return DatasetDir(src)
    source = describe_source(cfg.path, cfg)  # raises if missing; database URLs are not paths
    out = default_output_dir(cfg)
    fingerprint, files = input_fingerprint(cfg)
    reusable = not force and not source.remote and DatasetDir.is_dataset(out)
    if reusable and DatasetDir(out).manifest.get("fingerprint") == fingerprint:
        return DatasetDir(out)

    counts: Counter[str] = Counter()
    cleaned: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    wheres: list[str] = []
    rejected: list[dict[str, Any]] = []
    problems: Counter[str] = Counter()
    fmt: str | None = None
    mapping: dict[str, str] = {}
    for row in read_rows(cfg.path, cfg):
        counts["read"] += 1
        try:
            if row.problem:
                raise RowProblem(*row.problem)
            if fmt is None:
                fmt = detect_format(list(row.fields), cfg, row.fields)
                mapping = resolve_columns(list(row.fields), fmt, cfg)
            record = to_record(row.fields, fmt, mapping)
            record = clean_record(record, cfg.clean, cleaned)
            _check_after_cleaning(record, cfg)
        except RowProblem as p:
            if p.kind == "missing_value" and cfg.clean.missing == "drop":
                counts["dropped_missing"] += 1
                continue
            problems[p.kind] += 1
            rejected.append({"where": row.where, "problem": p.kind, "message": str(p), "row": row.fields})
            continue
        records.append(record)
        wheres.append(row.where)
    if fmt is None:
        raise TuneforgeError(f"no rows could be read from {src}", where="data.path")
    if rejected and cfg.on_error == "raise":
        raise TuneforgeError(_problem_summary(rejected, problems), fix=_FIX_ON_ERROR)
    counts["rejected"] = len(rejected)

    dup_of = exact_duplicates([record_text(r) for r in records]) if cfg.dedup != "none" else []
    if dup_of:
        keep = [i for i, d in enumerate(dup_of) if d is None]
        counts["exact_duplicates"] = len(records) - len(keep)
        records = [records[i] for i in keep]
    if len(records) < cfg.min_examples:
        raise TuneforgeError(
            f"only {len(records)} usable examples after cleaning (need at least {cfg.min_examples})",
            where="data.path",
            fix="add more data, or relax the cleaning/validation settings",
        )
    labels = sorted({str(r["label"]) for r in records}) if fmt == "classification" else []
    strata = [r["label"] for r in records] if fmt == "classification" and cfg.stratify else [0] * len(records)
    splits = split_indices(strata, cfg.splits, cfg.seed)
    counts["written"] = len(records)

    manifest: dict[str, Any] = {
        "kind": DatasetDir.KIND,
        "tuneforge_version": __version__,
        "format": fmt,
        "source": {"path": source.display, "reader": source.kind},
        "source_files": files,
        "columns": mapping,
        "fingerprint": fingerprint,
        "config": cfg.model_dump(mode="json"),
        "counts": dict(counts),
        "cleaning": dict(cleaned),
        "problems": dict(problems),
        "labels": labels,
        "splits": {name: len(idx) for name, idx in splits.items()},
        "label_distribution": {
            name: dict(sorted(Counter(str(records[i]["label"]) for i in idx).items())) for name, idx in splits.items()
        }
        if labels
        else {},
    }
    with atomic_dir(out) as tmp:
        for name in SPLIT_NAMES:
            write_jsonl(tmp / f"{name}.jsonl", (records[i] for i in splits[name]))
        if rejected:
            write_jsonl(tmp / "rejected.jsonl", rejected)
        write_json_atomic(tmp / "manifest.json", manifest)
    return DatasetDir(out)


def _check_after_cleaning(record: dict[str, Any], cfg: DataConfig) -> None:
    text = record.get("text")
    if isinstance(text, str):
        if len(text) < cfg.clean.min_chars:
            raise RowProblem("missing_value" if not text else "too_short", f"text shorter than {cfg.clean.min_chars}")
        if cfg.clean.max_chars is not None and len(text) > cfg.clean.max_chars:
            raise RowProblem("too_long", f"text longer than {cfg.clean.max_chars} characters")
    if cfg.labels is not None and "label" in record and str(record["label"]) not in cfg.labels:
        raise RowProblem("unknown_label", f"label {record['label']!r} is not in data.labels {cfg.labels}")


_FIX_ON_ERROR = "fix the rows above, or set data.on_error=drop to drop them into rejected.jsonl"


def _problem_summary(rejected: list[dict[str, Any]], problems: Counter[str]) -> str:
    lines = [f"{len(rejected)} invalid rows ({', '.join(f'{k}: {v}' for k, v in problems.most_common())}):"]
    for r in rejected[:MAX_LISTED_PROBLEMS]:
        lines.append(f"  {r['where']}: [{r['problem']}] {r['message']}")
    if len(rejected) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(rejected) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)
