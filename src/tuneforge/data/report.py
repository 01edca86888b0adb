"""What a preparation did, for people: the manifest's numbers, and report.md / report.html built from them.

The HTML page is self-contained (inline CSS, plots as base64 PNG) so it can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge import __version__
from tuneforge.artifacts import DatasetDir, write_text_atomic
from tuneforge.config import DataConfig
from tuneforge.data.dedup import MATCHING
from tuneforge.data.lengths import length_stats
from tuneforge.data.near_dup import NUM_PERM, SHINGLE_WORDS, lsh_params
from tuneforge.data.split import SPLIT_NAMES

if TYPE_CHECKING:
    from tuneforge.data.leakage import Leakage

TINY = 5  # fewer rows of a class or group than this in a split is worth a warning
SHIFT = 0.10  # a class or group share differing this much between train and another split is worth a warning
TOP_CLUSTERS = 10
CLUSTER_EXAMPLES = 3
SNIPPET = 300  # characters of an example text shown

CLEAN_REASONS = ("missing_value", "empty_after_cleaning", "too_short", "too_long", "identical_answers")
LENGTH_REASONS = ("too_many_tokens", "answer_too_long")


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET else text[:SNIPPET] + "…"


def summarize(
    *,
    cfg: DataConfig,
    fmt: str | None,
    mapping: dict[str, str],
    counts: Counter[str],
    dropped: Any,
    cleaning: Counter[str],
    tokenizer: str,
    measured_as: str,
    max_tokens: int | None,
    split: np.ndarray,
    orders: dict[str, list[int]],
    tokens: np.ndarray,
    labels: np.ndarray,
    label_names: list[str],
    declared: set[str] | None,
    groups: np.ndarray,
    group_names: list[str],
    family: np.ndarray,
    cluster: np.ndarray,
    keep: np.ndarray,
    leak: Leakage,
    example: Callable[[int], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's numbers, and extras only the report shows (plots' raw data, rejected examples)."""
    invalid, filtered = dropped.invalid, dropped.filtered
    read = counts["read"]
    after_validate = read - sum(invalid.values())
    after_clean = after_validate - sum(filtered[r] for r in CLEAN_REASONS)
    after_length = after_clean - sum(filtered[r] for r in LENGTH_REASONS)
    conflicts = counts["label_conflicts"]
    after_dedup = after_length - counts["exact_duplicates"] - counts["near_duplicates"] - conflicts
    # Rows kept longer than max_tokens (over_length: truncate) are cut when encoded; conversations were cut
    # at a turn boundary already.
    over = tokens > max_tokens if max_tokens is not None else np.zeros(len(tokens), dtype=bool)
    truncated = counts["truncated_at_turn"] + int(over.sum())
    flat = {
        "read": read,
        "invalid": sum(invalid.values()),
        **{r: filtered[r] for r in (*CLEAN_REASONS, *LENGTH_REASONS) if filtered[r]},
        "truncated": truncated,
        "exact_duplicates": counts["exact_duplicates"],
        "near_duplicates": counts["near_duplicates"],
        **({"label_conflicts": conflicts} if conflicts else {}),
        "leakage_dropped": counts["leakage_dropped"],
        "rejected": dropped.total,  # = the lines of rejected.jsonl, whatever the reason
        "written": counts["written"],
    }
    steps = [
        {"step": "read", "out": read},
        {"step": "validate", "in": read, "dropped": dict(invalid.most_common()), "out": after_validate},
        {
            "step": "clean",
            "in": after_validate,
            "changed": dict(sorted(cleaning.items())),
            "dropped": {r: filtered[r] for r in CLEAN_REASONS if filtered[r]},
            "out": after_clean,
        },
        {
            "step": "token_length",
            "in": after_clean,
            "dropped": {r: filtered[r] for r in LENGTH_REASONS if filtered[r]},
            "truncated": truncated,
            "out": after_length,
        },
        {
            "step": "deduplicate",
            "in": after_length,
            "dropped": {
                "exact_duplicate": counts["exact_duplicates"],
                "near_duplicate": counts["near_duplicates"],
                **({"label_conflict": conflicts} if conflicts else {}),
            },
            "out": after_dedup,
        },
        {
            "step": "leakage_check",
            "in": after_dedup,
            "dropped": {"exact": leak.exact, "near": leak.near},
            "out": counts["written"],
        },
        {"step": "split", "in": counts["written"], "out": {n: len(orders[n]) for n in SPLIT_NAMES}},
    ]
    label_set: list[str] = []
    label_dist: dict[str, dict[str, int]] = {}
    if fmt == "classification":
        written = np.unique(labels[split >= 0])
        label_set = sorted({label_names[i] for i in written} | set(declared or ()))
        label_dist = _distribution(split, labels, label_names, label_set)
    group_dist = _distribution(split, groups, group_names, sorted(group_names)) if cfg.group_column else {}
    bands, rows = lsh_params(cfg.near_dup_threshold, NUM_PERM)
    manifest: dict[str, Any] = {
        "kind": DatasetDir.KIND,
        "tuneforge_version": __version__,
        "format": fmt,
        "columns": mapping,
        "config": cfg.model_dump(mode="json"),
        "labels": label_set,
        "splits": {n: len(orders[n]) for n in SPLIT_NAMES},
        "counts": flat,
        "steps": steps,
        "cleaning": dict(sorted(cleaning.items())),
        "problems": dict(invalid.most_common()),
        "rejected": {
            "file": "rejected.jsonl" if dropped.total else None,
            "rows": dropped.total,
            "by_reason": dict((invalid + filtered).most_common()),
        },
        "label_distribution": label_dist,
        "group_column": cfg.group_column,
        "group_distribution": group_dist,
        "token_lengths": {
            "tokenizer": tokenizer,
            "measured_as": measured_as,
            "max_tokens": max_tokens,
            "over_length": cfg.over_length,
            "truncation": cfg.truncation,
            "truncated_at_turn": counts["truncated_at_turn"],
            "cut_when_encoded": {
                "all": int(over[split >= 0].sum()),
                **{n: int(over[orders[n]].sum()) for n in SPLIT_NAMES},
            },
            "all": length_stats(tokens[split >= 0]),
            **{n: length_stats(tokens[orders[n]]) for n in SPLIT_NAMES},
        },
        "duplicates": _duplicates(cfg, family, cluster, keep, example, bands, rows),
        "label_conflicts": {
            "mode": cfg.label_conflicts,
            "texts": counts["label_conflict_texts"],
            "rows": counts["label_conflict_rows"],
            "dropped": conflicts,
        },
        "leakage": {
            "exact": leak.exact,
            "near": leak.near,
            "dropped": int(leak.drop.sum()),
            "examples": [{"train": example(a), "other": example(b)} for a, b in leak.examples],
        },
    }
    manifest["warnings"] = _warnings(manifest, cfg)
    extras = {
        "lengths": {n: tokens[orders[n]].tolist() for n in SPLIT_NAMES},
        "rejected_examples": dropped.examples,
    }
    return manifest, extras


def _distribution(
    split: np.ndarray, ids: np.ndarray, names: list[str], shown: list[str]
) -> dict[str, dict[str, int]]:
    """Rows per value in each split, for every value in `shown` (zeros included); `ids` index `names`."""
    out: dict[str, dict[str, int]] = {}
    for s, name in enumerate(SPLIT_NAMES):
        counts = np.bincount(ids[(split == s) & (ids >= 0)], minlength=len(names))
        by_name = {names[i]: int(counts[i]) for i in range(len(names))}
        out[name] = {v: by_name.get(v, 0) for v in shown}
    return out


def _duplicates(
    cfg: DataConfig,
    family: np.ndarray,
    cluster: np.ndarray,
    keep: np.ndarray,
    example: Callable[[int], dict[str, Any]],
    bands: int,
    rows: int,
) -> dict[str, Any]:
    roots, sizes = np.unique(cluster, return_counts=True) if len(cluster) else (np.empty(0), np.empty(0))
    multi = roots[sizes > 1]
    top = sorted(zip(sizes[sizes > 1].tolist(), multi.tolist(), strict=True), key=lambda t: (-t[0], t[1]))
    largest = []
    for size, root in top[:TOP_CLUSTERS]:
        members = np.flatnonzero(cluster == root)
        kind = "exact" if len(np.unique(family[members])) == 1 else "near"
        shown = []
        for i in members[:CLUSTER_EXAMPLES].tolist():
            ex = example(i)
            shown.append({"where": ex["where"], "text": _snippet(ex["text"]), "kept": bool(keep[i])})
        largest.append({"size": int(size), "kind": kind, "kept": int(keep[members].sum()), "examples": shown})
    return {
        "mode": cfg.dedup,
        "exact_match": MATCHING,
        "threshold": cfg.near_dup_threshold,
        "num_perm": NUM_PERM,
        "shingle_words": SHINGLE_WORDS,
        "lsh_bands": bands,
        "lsh_rows": rows,
        "clusters": len(multi),
        "rows_in_clusters": int(sizes[sizes > 1].sum()) if len(sizes) else 0,
        "largest": largest,
    }


def _warnings(m: dict[str, Any], cfg: DataConfig) -> list[str]:
    """Representativeness and leakage problems worth a person's attention."""
    out: list[str] = []
    splits = m["splits"]
    for name in SPLIT_NAMES:
        if splits[name] == 0:
            out.append(f"the {name} split is empty")
    for what, dist in (
        ("label", m["label_distribution"]),
        (f"group ({cfg.group_column})", m["group_distribution"]),
    ):
        if not dist:
            continue
        train = dist["train"]
        for name in SPLIT_NAMES:
            n = splits[name]
            if n == 0:
                continue
            for value, count in dist[name].items():
                if count == 0:
                    out.append(f"{what} {value!r} is missing from the {name} split")
                elif count < TINY:
                    out.append(f"{what} {value!r} has only {count} rows in the {name} split")
                if name != "train" and splits["train"]:
                    shift = count / n - train.get(value, 0) / splits["train"]
                    if abs(shift) > SHIFT:
                        out.append(
                            f"{what} {value!r} is {count / n:.0%} of {name} but "
                            f"{train.get(value, 0) / splits['train']:.0%} of train"
                        )
    conflicts = m["label_conflicts"]
    if conflicts["texts"]:
        fate = "every copy was dropped" if conflicts["mode"] == "drop" else "one copy per label was kept"
        out.append(
            f"{conflicts['texts']} texts appear under different labels ({conflicts['rows']} rows); {fate} "
            f"(data.label_conflicts={conflicts['mode']})"
        )
    tl = m["token_lengths"]
    cut, written = tl["cut_when_encoded"]["all"], tl["all"]["count"]
    if cut:
        out.append(
            f"{cut} of {written} rows ({cut / written:.0%}) are longer than max_tokens={tl['max_tokens']} "
            f"({tl['measured_as']}) and are cut when encoded (data.truncation: {tl['truncation']})"
        )
    same = m["counts"].get("identical_answers", 0)
    if same:
        out.append(
            f"{same} preference pairs had the same chosen and rejected answer (nothing to prefer) and were "
            "dropped"
        )
    leak = m["leakage"]
    if leak["dropped"]:
        out.append(
            f"{leak['dropped']} training rows duplicated a validation/test row ({leak['exact']} exact, "
            f"{leak['near']} near) and were dropped from train"
        )
    return out


# --- report.md and report.html


def write_reports(out: Path, manifest: dict[str, Any], extras: dict[str, Any]) -> None:
    write_text_atomic(out / "report.md", render_markdown(manifest, extras))
    write_text_atomic(out / "report.html", render_html(manifest, extras))


def _step_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in m["steps"]:
        notes = []
        if s.get("dropped"):
            notes.append("dropped " + ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()))
        if s.get("changed"):
            notes.append("changed " + ", ".join(f"{k}: {v}" for k, v in s["changed"].items()))
        if s.get("truncated"):
            notes.append(f"truncated: {s['truncated']}")
        out = (
            s["out"] if not isinstance(s["out"], dict) else ", ".join(f"{k} {v}" for k, v in s["out"].items())
        )
        rows.append([s["step"], str(s.get("in", "")), str(out), "; ".join(notes)])
    return rows


def _tables(m: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the Markdown and the HTML report."""
    tables = [("Steps", ["step", "rows in", "rows out", "why"], _step_rows(m))]
    for title, dist in (
        ("Labels per split", m["label_distribution"]),
        ("Groups per split", m["group_distribution"]),
    ):
        if dist:
            values = list(dist["train"])
            tables.append(
                (title, ["", *SPLIT_NAMES], [[v, *(str(dist[s][v]) for s in SPLIT_NAMES)] for v in values])
            )
    tl = m["token_lengths"]
    keys = ["count", "min", "mean", "p50", "p90", "p95", "p99", "max"]
    cut = tl.get("cut_when_encoded", {})
    turns = f", cut at a turn boundary: {tl['truncated_at_turn']}" if tl.get("truncated_at_turn") else ""
    tables.append(
        (
            f"Token lengths ({tl['tokenizer']}: {tl.get('measured_as', 'tokens')}; max_tokens "
            f"{tl['max_tokens']}, over length: {tl['over_length']}, "
            f"truncation: {tl.get('truncation')}{turns})",
            ["split", *keys, "cut when encoded"],
            [[n, *(str(tl[n].get(k, "")) for k in keys), str(cut.get(n, 0))] for n in ("all", *SPLIT_NAMES)],
        )
    )
    return tables


def render_markdown(m: dict[str, Any], extras: dict[str, Any]) -> str:
    lines = [f"# Dataset report: {m['source']['path']}", ""]
    lines.append(
        f"Format **{m['format']}**, {m['counts']['written']} rows written of {m['counts']['read']} read: "
        + ", ".join(f"{n} {c}" for n, c in m["splits"].items())
        + f". Output fingerprint `{m['output_fingerprint'][:16]}`."
        + (f" {m['counts']['rejected']} rows are in `rejected.jsonl`." if m["counts"]["rejected"] else "")
    )
    lines.append("")
    if m["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in m["warnings"]), ""]
    for title, header, rows in _tables(m):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    d = m["duplicates"]
    lines += [
        "## Duplicate clusters",
        "",
        f"{d['clusters']} clusters ({d['rows_in_clusters']} rows) at Jaccard ≥ {d['threshold']} on "
        f"{d['shingle_words']}-word shingles (MinHash {d['num_perm']} permutations, {d['lsh_bands']}×"
        f"{d['lsh_rows']} LSH bands); mode {d['mode']}. Exact duplicates are texts equal when "
        f"{d['exact_match']}.",
        "",
    ]
    for i, c in enumerate(d["largest"], 1):
        lines.append(f"{i}. {c['size']} rows ({c['kind']}, {c['kept']} kept)")
        lines += [
            f"   - `{e['where']}`{' (kept)' if e['kept'] else ''}: {_one_line(e['text'])}"
            for e in c["examples"]
        ]
    lines.append("")
    leak = m["leakage"]
    lines += [
        "## Leakage check",
        "",
        f"Training rows duplicating a validation/test row: {leak['exact']} exact, {leak['near']} near; "
        f"{leak['dropped']} dropped.",
        "",
    ]
    for e in leak["examples"]:
        lines.append(f"- `{e['train']['where']}` ≈ `{e['other']['where']}`: {_one_line(e['train']['text'])}")
    rejected = extras["rejected_examples"]
    if rejected:
        lines += ["", "## Examples of rejected rows", "", f"All of them: `{m['rejected']['file']}`.", ""]
        lines += [f"- `{r['where']}` [{r['problem']}] {r['message']}" for r in rejected]
    return "\n".join(lines).rstrip() + "\n"


def _one_line(text: str) -> str:
    return _snippet(" ".join(text.split())).replace("|", "\\|")


def _plot_png(draw: Callable[[Any], None]) -> str:
    """A base64 PNG of what `draw(ax)` plots, without a timestamp so the report stays byte-identical."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=90)
    ax = fig.subplots()
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label_plot(dist: dict[str, dict[str, int]], splits: dict[str, int]) -> str:
    values = list(dist["train"])
    width = 0.8 / len(SPLIT_NAMES)

    def draw(ax: Any) -> None:
        x = np.arange(len(values))
        for k, name in enumerate(SPLIT_NAMES):
            share = [dist[name][v] / splits[name] if splits[name] else 0.0 for v in values]
            ax.bar(x + (k - 1) * width, share, width, label=name)
        ax.set_xticks(
            x, values, rotation=30 if len(values) > 6 else 0, ha="right" if len(values) > 6 else "center"
        )
        ax.set_ylabel("share of split")
        ax.legend()

    return _plot_png(draw)


def _length_plot(lengths: dict[str, list[int]]) -> str:
    everything = np.concatenate([np.asarray(v, dtype=np.int64) for v in lengths.values()])
    edges = np.histogram_bin_edges(everything, bins=min(50, max(1, len(np.unique(everything)))))

    def draw(ax: Any) -> None:
        for name in SPLIT_NAMES:
            if lengths[name]:
                ax.hist(lengths[name], bins=edges, histtype="step", density=True, label=name, linewidth=1.5)
        ax.set_xlabel("tokens per example")
        ax.set_ylabel("density")
        ax.legend()

    return _plot_png(draw)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
    # a wide table scrolls inside itself and a plot shrinks: on a phone the page itself never scrolls sideways
    "table{border-collapse:collapse;margin:.5em 0 1.5em;display:block;max-width:100%;overflow-x:auto}"
    "img{max-width:100%;height:auto}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top}th{background:#f3f3f3}.warn{color:#a40}code{background:#f6f6f6}"
    ".ex{font-size:.9em;color:#444}"
)


def render_html(m: dict[str, Any], extras: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Dataset report: {e(m['source']['path'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Dataset report</h1><p><code>{e(m['source']['path'])}</code> → format "
        f"<b>{e(str(m['format']))}</b>, "
        f"{m['counts']['written']} rows written of {m['counts']['read']} read "
        f"({', '.join(f'{n} {c}' for n, c in m['splits'].items())}); output fingerprint "
        f"<code>{m['output_fingerprint'][:16]}</code>.</p>",
    ]
    if m["warnings"]:
        parts.append(
            "<h2>Warnings</h2><ul>"
            + "".join(f"<li class='warn'>{e(w)}</li>" for w in m["warnings"])
            + "</ul>"
        )
    for title, header, rows in _tables(m):
        parts.append(
            f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    if m["label_distribution"]:
        png = _label_plot(m["label_distribution"], m["splits"])
        parts.append(
            f"<h2>Label distribution</h2><img alt='labels per split' src='data:image/png;base64,{png}'>"
        )
    if any(extras["lengths"].values()):
        png = _length_plot(extras["lengths"])
        parts.append(f"<h2>Length histogram</h2><img alt='token lengths' src='data:image/png;base64,{png}'>")
    d = m["duplicates"]
    parts.append(
        f"<h2>Duplicate clusters</h2><p>{d['clusters']} clusters ({d['rows_in_clusters']} rows) at Jaccard ≥ "
        f"{d['threshold']} on {d['shingle_words']}-word shingles (MinHash {d['num_perm']} permutations, "
        f"{d['lsh_bands']}×{d['lsh_rows']} LSH bands); mode {e(d['mode'])}. Exact duplicates are texts "
        f"equal when {e(d['exact_match'])}.</p><ol>"
    )
    for c in d["largest"]:
        items = "".join(
            f"<li class='ex'><code>{e(x['where'])}</code>{' (kept)' if x['kept'] else ''}: "
            f"{e(x['text'])}</li>"
            for x in c["examples"]
        )
        parts.append(f"<li>{c['size']} rows ({c['kind']}, {c['kept']} kept)<ul>{items}</ul></li>")
    parts.append("</ol>")
    leak = m["leakage"]
    parts.append(
        f"<h2>Leakage check</h2><p>Training rows duplicating a validation/test row: {leak['exact']} exact, "
        f"{leak['near']} near; {leak['dropped']} dropped.</p><ul>"
        + "".join(
            f"<li class='ex'><code>{e(x['train']['where'])}</code> ≈ <code>{e(x['other']['where'])}</code>: "
            f"{e(_snippet(x['train']['text']))}</li>"
            for x in leak["examples"]
        )
        + "</ul>"
    )
    rejected = extras["rejected_examples"]
    if rejected:
        parts.append(
            "<h2>Examples of rejected rows</h2>"
            f"<p>All of them: <code>{e(str(m['rejected']['file']))}</code></p>"
        )
        parts.append("<table><tr><th>where</th><th>problem</th><th>message</th></tr>")
        parts += [
            f"<tr><td><code>{e(r['where'])}</code></td><td>{e(r['problem'])}</td><td>{e(r['message'])}</td></tr>"
            for r in rejected
        ]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
