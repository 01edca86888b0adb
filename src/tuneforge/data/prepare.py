"""The data-preparation pipeline: read → validate → clean → measure → deduplicate → split → check → write.

Rows stream from the source in batches. A row that survives validation and cleaning is written at once to a
spill file inside the temporary output directory; memory keeps only a few numbers per row (its offset, a
16-byte text digest, label, group, split and token length) and its MinHash signature goes to a disk-backed
array. Deduplication, splitting and the leakage check work on those; the last pass copies the kept rows from
the spill file into the split files. Everything is written into a temporary sibling of the output directory,
which replaces the output in one rename only when all of it succeeded.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge import __version__, builtin
from tuneforge.artifacts import DatasetDir, atomic_dir, sha256_file, write_json_atomic
from tuneforge.config import DataConfig
from tuneforge.data.chat import assistant_ends, to_messages
from tuneforge.data.clean import Cleaner, normalize_label
from tuneforge.data.conflicts import resolve_conflicts
from tuneforge.data.dedup import exact_families, key_of_normalized, normalize_for_matching, one_per_group
from tuneforge.data.leakage import find_leakage
from tuneforge.data.lengths import LengthMeter, measure_key, token_counter
from tuneforge.data.near_dup import NearDuplicateIndex, connected_clusters
from tuneforge.data.output import check_output, default_output_dir
from tuneforge.data.progress import Passes
from tuneforge.data.records import (
    RowProblem,
    detect_format,
    group_value,
    record_text,
    resolve_columns,
    to_record,
)
from tuneforge.data.rejected import FIX_ON_ERROR, MAX_LISTED_PROBLEMS, Dropped, problem_summary
from tuneforge.data.report import write_reports
from tuneforge.data.sources import describe_source, read_rows
from tuneforge.data.sources.base import RawRow
from tuneforge.data.split import SPLIT_NAMES, split_indices, split_name
from tuneforge.errors import TuneforgeError

if TYPE_CHECKING:
    from tuneforge.config import ModelConfig

PAIR_ANSWERS = ("chosen", "rejected")
BATCH = 2048  # rows tokenized, hashed and spilled together


def input_fingerprint(
    cfg: DataConfig, files: list[Path], tokenizer: str, max_tokens: int | None
) -> tuple[str, list[dict[str, str]]]:
    """Content hash of the sources, the data config and the tokenizer: the same inputs give the same value."""
    hashed = [{"path": str(p), "sha256": sha256_file(p)} for p in files]
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(json.dumps(cfg.model_dump(mode="json", exclude={"output_dir"}), sort_keys=True).encode())
    h.update(json.dumps({"tokenizer": tokenizer, "max_tokens": max_tokens}).encode())
    for f in hashed:
        h.update(f["sha256"].encode())
    return h.hexdigest(), hashed


def _resolved(cfg: DataConfig) -> DataConfig:
    """`cfg` with a built-in dataset's name turned into its file (and its default output folder)."""
    if cfg.path is None:
        raise TuneforgeError(
            "no data given", where="data.path", fix="set data.path to your data file or folder"
        )
    if not builtin.is_builtin(cfg.path):
        return cfg
    name = cfg.path.removeprefix(builtin.PREFIX)
    cfg = cfg.model_copy(update={"path": str(builtin.resolve_data(cfg.path))})
    if cfg.output_dir is None:
        cfg.output_dir = str(Path("datasets") / name)
    return cfg


def _holds(out: Path, fingerprint: str) -> bool:
    return DatasetDir.is_dataset(out) and DatasetDir(out).manifest.get("fingerprint") == fingerprint


def already_prepared(cfg: DataConfig, model: ModelConfig | None = None) -> DatasetDir | None:
    """The dataset `prepare_dataset(cfg, model=model)` would return without preparing anything, else None.

    For the commands that size a run before it starts (`tuneforge estimate`): a config naming a raw file (or a
    built-in dataset) that `train` already prepared is sized with the real counts and token lengths. Reads
    only the source files' hashes, never their rows; a remote source (URL, database) is never reused.
    """
    cfg = _resolved(cfg)
    assert cfg.path is not None
    if DatasetDir.is_dataset(Path(cfg.path)):
        return DatasetDir(Path(cfg.path))
    if not Path(cfg.path).exists():
        return None
    source = describe_source(cfg.path, cfg)
    out = default_output_dir(cfg)
    if source.remote or not DatasetDir.is_dataset(out):
        return None
    max_tokens = cfg.max_tokens or (model.max_length if model is not None else None)
    fingerprint, _ = input_fingerprint(cfg, source.files, measure_key(model), max_tokens)
    return DatasetDir(out) if _holds(out, fingerprint) else None


def prepare_dataset(cfg: DataConfig, *, force: bool = False, model: ModelConfig | None = None) -> DatasetDir:
    """Turn `cfg.path` into a dataset directory; reuse an existing one whose inputs are unchanged.

    Args:
        model: whose tokenizer measures token lengths (and whose max_length is the default data.max_tokens);
            without it lengths are counted in whitespace-separated words.
    """
    cfg = _resolved(cfg)
    assert cfg.path is not None
    if DatasetDir.is_dataset(Path(cfg.path)):
        return DatasetDir(Path(cfg.path))
    source = describe_source(cfg.path, cfg)
    out = default_output_dir(cfg)
    check_output(out, Path(cfg.path), source.files)
    max_tokens = cfg.max_tokens or (model.max_length if model is not None else None)
    fingerprint, files = input_fingerprint(cfg, source.files, measure_key(model), max_tokens)
    if not force and not source.remote and _holds(out, fingerprint):
        return DatasetDir(out)

    meter = LengthMeter(token_counter(model), model.task if model else "causal-lm", cfg.prompt_template)
    with Passes() as passes, atomic_dir(out, kind=DatasetDir.KIND) as tmp:
        work = tmp / ".work"
        work.mkdir()
        run = _Run(cfg, meter, max_tokens, tmp, work, passes)
        run.read(read_rows(cfg.path, cfg))
        manifest = run.finish()
        if manifest.get("token_lengths"):
            # What the lengths were counted for: a run on another model measures again (lengths_for_model).
            manifest["token_lengths"]["measured_for"] = measure_key(model)
        manifest.update(
            fingerprint=fingerprint,
            source={"path": source.display, "reader": source.kind, "remote": source.remote},
            source_files=files,
        )
        for item in sorted(work.iterdir()):
            item.unlink()
        work.rmdir()
        write_json_atomic(tmp / "manifest.json", _ordered(manifest))
        write_reports(tmp, manifest, run.report_extras)
    return DatasetDir(out)


class _Run:
    """One preparation: the streaming pass, decisions on the compact per-row facts, then the writes."""

    def __init__(
        self,
        cfg: DataConfig,
        meter: LengthMeter,
        max_tokens: int | None,
        out: Path,
        work: Path,
        passes: Passes,
    ) -> None:
        self.cfg, self.meter, self.max_tokens, self.out, self.passes = cfg, meter, max_tokens, out, passes
        self.counter = meter.counter
        self.cleaner = Cleaner(cfg.clean)
        self.allowed = {normalize_label(x, cfg.clean) for x in cfg.labels} if cfg.labels is not None else None
        self.fmt: str | None = None
        self.mapping: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.over_length: list[dict[str, Any]] = []
        self.spill_path = work / "records.tsv"
        self.spill = open(self.spill_path, "wb")  # noqa: SIM115 (closed in finish)
        self.dropped = Dropped(open(out / "rejected.jsonl", "w", encoding="utf-8", newline="\n"))  # noqa: SIM115
        self.index = NearDuplicateIndex(cfg.near_dup_threshold, workdir=work)
        # Per kept row: where its spilled line starts, its text digest, token length, label/group/split ids.
        self.offsets = array("q")
        self.keys = bytearray()
        self.tokens = array("q")
        self.labels = array("q")
        self.groups = array("q")
        self.user_split = array("b")
        self.label_ids: dict[str, int] = {}
        self.group_ids: dict[str, int] = {}
        self.report_extras: dict[str, Any] = {}
        self._batch: list[tuple[dict[str, Any], RawRow, int, str | None]] = []
        # (first row, end row, label list or None: not measured yet) per batch: a classification prompt
        # lists the labels, so rows measured before the last label appeared are measured again.
        self._measured_with: list[tuple[int, int, list[str] | None]] = []

    # --- pass 1: stream, validate, clean, measure, spill

    def read(self, rows: Any) -> None:
        task = self.passes.start("read and clean")
        for row in rows:
            self.counts["read"] += 1
            self._one(row)
            if len(self._batch) >= BATCH:
                self._flush()
                # Per batch: updating the bar for every row would cost more than cleaning the row.
                self.passes.show(task, self.counts["read"])
        self._flush()
        self._remeasure_prompts()
        self.passes.finish(task)

    def _one(self, row: RawRow) -> None:
        cfg = self.cfg
        try:
            if row.problem:
                raise RowProblem(*row.problem)
            if self.fmt is None:
                self.fmt = detect_format(list(row.fields), cfg, row.fields)
                self.mapping = resolve_columns(list(row.fields), self.fmt, cfg)
                self._check_extra_columns(row)
            fields = self.cleaner.fill_missing(row.fields, self.mapping)
            record = self.cleaner.record(to_record(fields, self.fmt, self.mapping))
            split = self._user_split(row)
            group = None if cfg.group_column is None else group_value(row.fields.get(cfg.group_column))
            if self.allowed is not None and "label" in record and str(record["label"]) not in self.allowed:
                raise RowProblem(
                    "unknown_label", f"label {record['label']!r} is not in data.labels {cfg.labels}"
                )
        except RowProblem as p:
            filtered = p.kind == "missing_value" and cfg.clean.missing == "drop"
            self.dropped.add(row.where, p.kind, str(p), row.fields, invalid=not filtered)
            return
        text = record_text(record)
        reason = None
        if not text.strip():
            reason = ("empty_after_cleaning", "nothing is left of the text after cleaning")
        elif len(text) < cfg.clean.min_chars:
            reason = ("too_short", f"text shorter than data.clean.min_chars={cfg.clean.min_chars}")
        elif cfg.clean.max_chars is not None and len(text) > cfg.clean.max_chars:
            reason = ("too_long", f"text longer than data.clean.max_chars={cfg.clean.max_chars}")
        elif self.fmt == "preference" and _same_answer(record["chosen"], record["rejected"]):
            reason = (
                "identical_answers",
                "chosen and rejected are the same answer: there is nothing to prefer",
            )
        if reason:
            self.dropped.add(row.where, *reason, row.fields, invalid=False)
            return
        if group is not None:
            record["group"] = group
        self._batch.append((record, row, split, group))

    def _check_extra_columns(self, row: RawRow) -> None:
        for key in ("split_column", "group_column"):
            col = getattr(self.cfg, key)
            if col is not None and col not in row.fields:
                raise TuneforgeError(
                    f"column {col!r} is not in the data; the columns are {list(row.fields)}",
                    where=f"data.{key}",
                    fix="name one of the columns above, or unset the key",
                )

    def _user_split(self, row: RawRow) -> int:
        if self.cfg.split_column is None:
            return -1
        value = row.fields.get(self.cfg.split_column)
        name = split_name(value)
        if name is None:
            raise RowProblem(
                "unknown_split", f"split {value!r} is not train, validation (val, valid, dev) or test"
            )
        return SPLIT_NAMES.index(name)

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        assert self.fmt is not None
        records = [r for r, *_ in batch]
        labels: list[str] | None = self._prompt_labels(records)
        if labels and self.cfg.over_length == "truncate":
            # No decision here depends on a prompt's length: measure once, when every label is known.
            lengths, labels = [0] * len(records), None
        else:
            lengths = self.meter.lengths(records, self.fmt, labels or [])
        keep = []
        for i, (record, row, _, _) in enumerate(batch):
            if self.max_tokens is None or lengths[i] <= self.max_tokens:
                keep.append(i)
                continue
            message = f"{lengths[i]} tokens, more than data.max_tokens={self.max_tokens}"
            if self.cfg.over_length == "raise":
                self._over_length(row.where, message)
            elif self.cfg.over_length == "drop":
                self.dropped.add(row.where, "too_many_tokens", message, row.fields, invalid=False)
            elif not self.meter.is_chat(self.fmt) or self.fmt == "classification":
                keep.append(i)  # kept whole: cut when encoded (data.truncation); the report counts it
            elif self.fmt == "preference":
                if self._answers_fit(record, row):
                    keep.append(i)  # the prompt is cut when encoded (data.truncation), answers whole
            else:
                fitted = self._truncate(record, row, lengths[i])
                if fitted is not None:
                    lengths[i] = fitted
                    keep.append(i)
        first = len(self.tokens)
        normalized = [normalize_for_matching(record_text(batch[i][0])) for i in keep]
        self.index.add(normalized)
        for i, norm in zip(keep, normalized, strict=True):
            record, row, split, group = batch[i]
            self.offsets.append(self.spill.tell())
            self.spill.write(
                (json.dumps(row.where) + "\t" + json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
            )
            self.keys += key_of_normalized(norm)
            self.tokens.append(lengths[i])
            label = record.get("label")
            self.labels.append(
                self.label_ids.setdefault(str(label), len(self.label_ids)) if label is not None else -1
            )
            self.groups.append(-1 if group is None else self.group_ids.setdefault(group, len(self.group_ids)))
            self.user_split.append(split)
        if labels != []:
            self._measured_with.append((first, len(self.tokens), labels))

    def _prompt_labels(self, records: list[dict[str, Any]]) -> list[str]:
        """The label list a classification prompt shows (as the dataset will list them), [] otherwise."""
        if self.fmt != "classification" or not self.meter.is_chat(self.fmt) or self.counter.tokenizer is None:
            return []
        seen = set(self.label_ids) | {str(r["label"]) for r in records} | (self.allowed or set())
        return sorted(seen)

    def _remeasure_prompts(self) -> None:
        """Measure the classification prompts not measured yet, or measured before every label was seen.

        With over_length raise, a prompt found too long now is reported like any other; with drop, such a
        prompt (a few tokens over, from the labels that appeared later) stays and is cut when encoded.
        """
        final = self._prompt_labels([])
        stale = [i for a, b, used in self._measured_with if used != final for i in range(a, b)]
        self._measured_with = []
        if not stale:
            return
        assert self.fmt is not None
        self.spill.flush()
        with open(self.spill_path, "rb") as spill:
            for start in range(0, len(stale), BATCH):
                rows, wheres, records = stale[start : start + BATCH], [], []
                for i in rows:
                    spill.seek(self.offsets[i])
                    where, _, record = spill.readline().decode("utf-8").partition("\t")
                    wheres.append(json.loads(where))
                    records.append(json.loads(record))
                lengths = self.meter.lengths(records, self.fmt, final)
                for i, where, n in zip(rows, wheres, lengths, strict=True):
                    self.tokens[i] = n
                    if (
                        self.cfg.over_length == "raise"
                        and self.max_tokens is not None
                        and n > self.max_tokens
                    ):
                        self._over_length(where, f"{n} tokens, more than data.max_tokens={self.max_tokens}")

    def _over_length(self, where: str, message: str) -> None:
        if len(self.over_length) < MAX_LISTED_PROBLEMS:
            self.over_length.append({"where": where, "problem": "too_many_tokens", "message": message})
        self.counts["too_many_tokens"] += 1

    def _answers_fit(self, record: dict[str, Any], row: RawRow) -> bool:
        """Whether both answers of an over-long pair fit once its prompt is cut, as encoding cuts it (the
        prompt first, the same cut for both); else the pair is dropped and reported, never learnt cut."""
        assert self.max_tokens is not None
        bare = [
            [{"role": "user", "content": ""}, {"role": "assistant", "content": record[k]}]
            for k in PAIR_ANSWERS
        ]
        longest = max(self.meter.conversation_lengths(bare))
        if longest <= self.max_tokens:
            return True
        self.dropped.add(
            row.where,
            "answer_too_long",
            f"{longest} tokens for the longer answer even with no prompt, more than "
            f"data.max_tokens={self.max_tokens}: the pair cannot fit whole answers",
            row.fields,
            invalid=False,
        )
        return False

    def _truncate(self, record: dict[str, Any], row: RawRow, length: int) -> int | None:
        """End an over-long conversation after its last assistant turn that fits; None (dropped) if none does.

        Done here rather than when encoding, so the dataset holds what training sees, and a conversation
        whose first answer does not fit is reported instead of being learnt with its answer cut off.
        """
        assert self.max_tokens is not None
        messages = to_messages(record, [], self.cfg.prompt_template)
        ends = [k for k in assistant_ends(messages) if k < len(messages)]  # the whole is known too long
        lengths = self.meter.conversation_lengths([messages[:k] for k in ends])
        fits = [(k, n) for k, n in zip(ends, lengths, strict=True) if n <= self.max_tokens]
        if fits and "messages" in record:
            k, n = fits[-1]
            record["messages"] = messages[:k]
            self.counts["truncated_at_turn"] += 1
            return n
        self.dropped.add(
            row.where,
            "answer_too_long",
            f"{lengths[0] if ends else length} tokens up to the end of the first assistant answer, more than "
            f"data.max_tokens={self.max_tokens}: no complete answer fits",
            row.fields,
            invalid=False,
        )
        return None

    # --- decisions on the compact per-row facts, then the writes

    def finish(self) -> dict[str, Any]:
        self.spill.close()
        self.dropped.file.close()
        cfg = self.cfg
        if self.fmt is None:
            if not self.dropped.total:
                raise TuneforgeError(
                    f"no rows could be read from {cfg.path}: it holds none", where="data.path"
                )
            # Every row was bad: say why, or the user is left guessing.
            raise TuneforgeError(
                f"no rows could be read from {cfg.path}; "
                + problem_summary(
                    self.dropped.examples, self.dropped.invalid + self.dropped.filtered, limit=5
                ),
                where="data.path",
                fix="fix the rows above (all of them are in the error's classes)",
            )
        if self.dropped.invalid and cfg.on_error == "raise":
            raise TuneforgeError(
                problem_summary(self.dropped.invalid_examples, self.dropped.invalid), fix=FIX_ON_ERROR
            )
        if self.over_length:
            raise TuneforgeError(
                problem_summary(
                    self.over_length, Counter({"too_many_tokens": self.counts["too_many_tokens"]})
                ),
                where="data.over_length",
                fix="raise data.max_tokens (or model.max_length), or set data.over_length=drop or truncate",
            )
        n = len(self.offsets)
        task = self.passes.start("match duplicates")
        family = exact_families(np.frombuffer(bytes(self.keys), dtype=np.uint64).reshape(n, 2))
        first = family == np.arange(n)
        exact_pairs = np.stack([family[~first], np.flatnonzero(~first)], axis=1)
        near = self.index.match(include=first)
        self.index.close()
        cluster = connected_clusters(n, np.concatenate([near.pairs, exact_pairs]))
        self.passes.finish(task)

        user = np.frombuffer(self.user_split, dtype=np.int8) if n else np.empty(0, np.int8)
        priority = user.astype(np.int64) if cfg.split_column else np.zeros(n, np.int64)
        labels = np.frombuffer(self.labels, dtype=np.int64) if n else np.empty(0, np.int64)
        conflict = self._label_conflicts(family, labels)
        group = {"exact": family, "near": cluster}.get(cfg.dedup, np.arange(n)).copy()
        if cfg.label_conflicts == "keep":
            group = np.unique(np.stack([group, labels], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
        elif conflict.any():  # drop: each conflicting row is its own group, so no other row dies with it
            group[conflict] = n + np.flatnonzero(conflict)
        keep = one_per_group(group, priority) if cfg.dedup != "none" else np.ones(n, dtype=bool)
        if cfg.split_column and cfg.dedup == "near":
            # Validation and test rows the source fixed (a retrain's frozen test split) lose only to an exact
            # copy: a near-duplicate chain through a new training row once joined two test rows the champion
            # had kept apart, and one was lost. Training rows near them still go, as before.
            exact = family
            if cfg.label_conflicts == "keep":
                exact = np.unique(np.stack([family, labels], axis=1), axis=0, return_inverse=True)[1]
            keep |= (user > 0) & one_per_group(exact.reshape(-1), priority)
        if cfg.label_conflicts == "drop":
            keep &= ~conflict
            self.counts["label_conflicts"] = int(conflict.sum())
        family_kept = np.zeros(n, dtype=bool)
        family_kept[family[keep]] = True
        removed = ~keep & ~(conflict if cfg.label_conflicts == "drop" else np.zeros(n, dtype=bool))
        exact_removed = int((removed & family_kept[family]).sum())
        self.counts["exact_duplicates"] = exact_removed
        self.counts["near_duplicates"] = int(removed.sum()) - exact_removed

        split = np.full(n, -1, dtype=np.int8)
        kept_idx = np.flatnonzero(keep)
        if cfg.split_column:
            split[kept_idx] = user[kept_idx]
        else:
            split[kept_idx] = self._auto_split(kept_idx, labels, cluster)
        leak = find_leakage(split, family, near.pairs)
        split[leak.drop] = -1
        self.counts["leakage_dropped"] = int(leak.drop.sum())
        written = int((split >= 0).sum())
        if written < cfg.min_examples:
            lost = self.dropped.invalid + self.dropped.filtered
            for key in ("exact_duplicates", "near_duplicates", "leakage_dropped"):
                lost[key] = self.counts[key]
            why = ", ".join(f"{k}: {v}" for k, v in lost.most_common() if v)
            raise TuneforgeError(
                f"only {written} usable examples after cleaning and deduplication (need at least "
                f"{cfg.min_examples}); of {self.counts['read']} rows read, left out: {why or 'none'}",
                where="data.path",
                fix="add more data, or relax the cleaning/validation settings",
            )
        self._check_two_labels(labels[split >= 0], written)
        self.counts["written"] = written
        orders = self._orders(split, kept_idx)
        return self._write(orders, split, family, cluster, keep, leak)

    def _check_two_labels(self, kept: np.ndarray, written: int) -> None:
        """A classifier needs two labels: a dataset of one is refused, not written to train nothing."""
        present = np.unique(kept[kept >= 0]) if self.fmt == "classification" else np.arange(2)
        if len(present) >= 2:
            return
        names = {v: k for k, v in self.label_ids.items()}
        only = f"labelled {names[int(present[0])]!r}" if len(present) else "unlabelled"
        cfg = self.cfg
        if cfg.max_rows is not None and self.counts["read"] >= cfg.max_rows:
            # Exports often come sorted by label (the demo tweets are): the first rows hold one.
            raise TuneforgeError(
                f"all {written} usable examples are {only}: a classifier needs two labels at least, and "
                f"data.max_rows kept only the file's first {cfg.max_rows:,} rows (a file sorted by label "
                "starts with one)",
                where="data.max_rows",
                fix="raise or remove data.max_rows, or shuffle the file's rows first",
            )
        raise TuneforgeError(
            f"all {written} usable examples are {only}: a classifier needs two labels at least",
            where="data.label_column",
            fix="check that data.label_column names the label column, or add examples of the other labels",
        )

    def _spilled(self, rows: list[int]) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(row, where, record) of spilled rows, read back from the spill file."""
        with open(self.spill_path, "rb") as spill:
            for i in rows:
                spill.seek(self.offsets[i])
                where, _, rec = spill.readline().decode("utf-8").partition("\t")
                yield i, json.loads(where), json.loads(rec)

    def _label_conflicts(self, family: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.fmt != "classification":
            return np.zeros(len(family), dtype=bool)
        conflict, texts = resolve_conflicts(
            self.cfg.label_conflicts,
            family,
            labels,
            list(self.label_ids),
            self._spilled,
            self.dropped,
            self.out / "rejected.jsonl",
        )
        self.counts["label_conflict_texts"] = texts
        self.counts["label_conflict_rows"] = int(conflict.sum())
        return conflict

    def _auto_split(self, kept_idx: np.ndarray, labels: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        """Seeded, stratified by label (classification), near-duplicate clusters kept whole in one split."""
        names = {v: k for k, v in self.label_ids.items()}
        strata: list[Any] = (
            [names[int(labels[i])] for i in kept_idx]
            if self.fmt == "classification" and self.cfg.stratify
            else [0] * len(kept_idx)
        )
        self._auto_orders = split_indices(
            strata, self.cfg.splits, self.cfg.seed, groups=cluster[kept_idx].tolist()
        )
        out = np.empty(len(kept_idx), dtype=np.int8)
        for s, name in enumerate(SPLIT_NAMES):
            out[self._auto_orders[name]] = s
        return out

    def _orders(self, split: np.ndarray, kept_idx: np.ndarray) -> dict[str, list[int]]:
        """Row order within each split: seeded shuffled, so that the first N rows are a fair sample."""
        if self.cfg.split_column:
            rng = random.Random(self.cfg.seed)
            orders = {}
            for s, name in enumerate(SPLIT_NAMES):
                rows = np.flatnonzero(split == s).tolist()
                rng.shuffle(rows)
                orders[name] = rows
            return orders
        return {
            name: [int(kept_idx[i]) for i in self._auto_orders[name] if split[kept_idx[i]] >= 0]
            for name in SPLIT_NAMES
        }

    def _write(
        self,
        orders: dict[str, list[int]],
        split: np.ndarray,
        family: np.ndarray,
        cluster: np.ndarray,
        keep: np.ndarray,
        leak: Any,
    ) -> dict[str, Any]:
        from tuneforge.data import report

        total = sum(len(o) for o in orders.values())
        task = self.passes.start("write splits", total=total)
        offsets = self.offsets
        file_hashes: dict[str, str] = {}
        with open(self.spill_path, "rb") as spill:

            def line(i: int) -> bytes:
                spill.seek(offsets[i])
                return spill.readline()

            for name in SPLIT_NAMES:
                h = hashlib.sha256()
                with open(self.out / f"{name}.jsonl", "wb") as f:
                    for i in orders[name]:
                        data = line(i)
                        data = data[data.index(b"\t") + 1 :]
                        f.write(data)
                        h.update(data)
                        self.passes.advance(task)
                file_hashes[f"{name}.jsonl"] = h.hexdigest()

            def example(i: int) -> dict[str, Any]:
                where, _, rec = line(i).decode("utf-8").partition("\t")
                return {"where": json.loads(where), "text": record_text(json.loads(rec))}

            manifest, extras = report.summarize(
                cfg=self.cfg,
                fmt=self.fmt,
                mapping=self.mapping,
                counts=self.counts,
                dropped=self.dropped,
                cleaning=self.cleaner.counts,
                tokenizer=self.counter.name,
                measured_as=self.meter.basis(self.fmt),
                max_tokens=self.max_tokens,
                split=split,
                orders=orders,
                tokens=np.frombuffer(self.tokens, dtype=np.int64)
                if len(self.tokens)
                else np.empty(0, np.int64),
                labels=np.frombuffer(self.labels, dtype=np.int64)
                if len(self.labels)
                else np.empty(0, np.int64),
                label_names=list(self.label_ids),
                declared=self.allowed,
                groups=np.frombuffer(self.groups, dtype=np.int64)
                if len(self.groups)
                else np.empty(0, np.int64),
                group_names=list(self.group_ids),
                family=family,
                cluster=cluster,
                keep=keep,
                leak=leak,
                example=example,
            )
        if not self.dropped.total:
            (self.out / "rejected.jsonl").unlink()
        manifest["files"] = file_hashes
        manifest["output_fingerprint"] = hashlib.sha256(
            "".join(file_hashes[f"{n}.jsonl"] for n in SPLIT_NAMES).encode()
        ).hexdigest()
        self.report_extras = extras
        return manifest


_MANIFEST_ORDER = (
    "kind",
    "tuneforge_version",
    "format",
    "fingerprint",
    "output_fingerprint",
    "source",
    "source_files",
    "columns",
    "labels",
    "splits",
    "counts",
)


def _ordered(manifest: dict[str, Any]) -> dict[str, Any]:
    """The headline keys first, so the manifest reads top-down."""
    head = {k: manifest[k] for k in _MANIFEST_ORDER if k in manifest}
    return {**head, **{k: v for k, v in manifest.items() if k not in head}}


def _same_answer(chosen: Any, rejected: Any) -> bool:
    """Chosen and rejected say the same (only whitespace may differ): a DPO pair with no preference in it."""
    return " ".join(str(chosen).split()) == " ".join(str(rejected).split())
