"""A monitor run over a request log written by serve/store.py's own writer, against a run's training split."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.unit.monitor.deployment import START, make_run, sports_text, support_text, write_log
from tuneforge.config import load_config
from tuneforge.monitor import monitor, resolve_window
from tuneforge.monitor.embed import Embedder
from tuneforge.monitor.log import read_traffic, window_rows
from tuneforge.monitor.run import alert_line
from tuneforge.serve.store import RequestLog, requests_table

DAY = resolve_window("2026-12-01", None, "1d")


def _cfg(run: Path):  # type: ignore[no-untyped-def]
    return load_config(run / "config.yaml")[0].monitor


def test_a_planted_topic_shift_alerts_and_a_same_topic_window_does_not(
    tmp_path: Path, tiny_bert: Path
) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(7)
    same = [support_text(rng) for _ in range(150)]
    write_log(tmp_path / "log.sqlite", same, [rng.choice("abc") for _ in same])
    result, alerts, _ = monitor(run, str(tmp_path / "log.sqlite"), DAY, _cfg(run))
    assert alerts == [] and result["enough_data"] is True
    assert result["tests"]["embedding_drift"]["verdict"] == "no drift detected"

    shifted = [sports_text(rng) for _ in range(150)]
    write_log(tmp_path / "shift.sqlite", shifted, [rng.choice("abc") for _ in shifted])
    result, alerts, html = monitor(run, str(tmp_path / "shift.sqlite"), DAY, _cfg(run))
    emb = result["tests"]["embedding_drift"]
    assert emb["drift"] is True and emb["statistic"] == 1.0 and emb["p_value"] == 0.02  # 49 permutations
    assert (emb["n_reference"], emb["n_live"]) == (300, 150)
    assert [a.metric for a in alerts] == ["embedding_drift"]  # the label mix did not change
    assert all(
        f["live"] in shifted and f["nearest_training"] not in shifted for f in result["input"]["farthest"]
    )
    assert (
        result["input"]["unseen_tokens"]["held_out"] == 0.0 and result["input"]["unseen_tokens"]["live"] > 0.3
    )
    folder = run / "monitor" / "2026-12-01T0000Z_2026-12-02T0000Z"
    assert html == folder / "report.html"
    assert sorted(p.name for p in folder.iterdir()) == [
        ".tuneforge",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert json.loads((folder / "report.json").read_text())["alerts"][0]["metric"] == "embedding_drift"
    md = (folder / "report.md").read_text()
    assert (
        "- ALERT prompt embeddings drifted [embedding_drift]: domain classifier, 5-fold ROC AUC vs "
        "permutation null: AUC 1, p = 0.02, p &lt; 0.05 and AUC ≥ 0.55 (n = 300 reference, 150 live)\n" in md
    )
    assert (
        "| prompt embeddings | domain classifier, 5-fold ROC AUC vs permutation null | AUC 1 | 0.02 |" in md
    )


def test_label_drift_on_a_changed_class_mix_in_the_log(tmp_path: Path, tiny_bert: Path) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(1)
    texts = [support_text(rng) for _ in range(150)]
    labels = ["a"] * 120 + ["b"] * 20 + ["c"] * 10
    write_log(tmp_path / "log.sqlite", texts, labels)
    result, alerts, _ = monitor(run, str(tmp_path / "log.sqlite"), DAY, _cfg(run))
    t = result["tests"]["label_drift"]
    assert (t["test"], t["drift"], t["n_reference"], t["n_live"]) == (
        "chi-squared",
        True,
        300,
        150,
    )
    assert result["output"]["labels"]["live"] == {"a": 120, "b": 20, "c": 10}
    assert result["output"]["mean_confidence"] == pytest.approx(0.8)
    assert [a.metric for a in alerts] == ["label_drift"]


def test_a_window_too_small_to_judge_says_so(tmp_path: Path, tiny_bert: Path) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(2)
    write_log(tmp_path / "log.sqlite", [sports_text(rng) for _ in range(12)], ["a"] * 12)
    result, alerts, html = monitor(run, str(tmp_path / "log.sqlite"), DAY, _cfg(run))
    assert (result["enough_data"], result["n"], alerts) == (False, 12, [])
    assert {t["verdict"] for t in result["tests"].values()} == {"not enough data (n = 12, need ≥ 100)"}
    # The language test is among them; its detector is not even loaded for a window it cannot judge.
    assert "language_mix_drift" in result["tests"] and "languages" not in result["input"]
    md = html.with_name("report.md").read_text()
    assert "- not enough data (n = 12, need ≥ 100): nothing in this window is judged" in md
    assert "no drift" not in md


def test_an_error_rate_above_5_percent_alerts_and_only_rows_in_the_window_count(
    tmp_path: Path, tiny_bert: Path
) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(3)
    texts = [support_text(rng) for _ in range(140)]
    log = tmp_path / "log.sqlite"
    write_log(log, texts, [rng.choice("abc") for _ in texts])
    write_log(log, ["x"] * 14, ["a"] * 14, status=500, prefix="err")
    write_log(log, ["y"] * 30, ["a"] * 30, status=500, prefix="late", start=START + timedelta(days=1))
    result, alerts, _ = monitor(run, str(log), DAY, _cfg(run))
    assert result["service"]["requests"] == 154 and result["service"]["statuses"] == {"200": 140, "500": 14}
    assert [alert_line(a.__dict__) for a in alerts] == [
        "ALERT error rate (5xx and 429) too high [error_rate]: 0.09091 > 0.05"
    ]


def test_the_window_is_read_in_pages_by_time_then_id(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    log = RequestLog(url)
    t0 = datetime(2026, 12, 1, 12, tzinfo=UTC)
    for i in range(10):  # pairs of rows share a timestamp: the page boundary falls between them
        log.log_request(id=f"r{9 - i}", time=t0 + timedelta(seconds=i // 2), status=200)
    log.log_request(id="before", time=t0 - timedelta(days=1), status=200)
    log.log_request(id="at-until", time=t0 + timedelta(hours=1), status=200)
    log.close()
    engine = sa.create_engine(url)
    rows = list(window_rows(engine, requests_table, t0, t0 + timedelta(hours=1), ["status"], page=3))
    engine.dispose()
    assert [r["id"] for r in rows] == ["r8", "r9", "r6", "r7", "r4", "r5", "r2", "r3", "r0", "r1"]


def test_model_keeps_only_the_requests_to_one_served_model(tmp_path: Path) -> None:
    log = RequestLog(f"sqlite:///{tmp_path / 'log.sqlite'}")
    for i, model in enumerate(["run", "other", "run"]):
        log.log_request(
            id=f"r{i}", time=START, model=model, endpoint="completion", status=200, prompt=f"p{i}"
        )
    log.close()
    both = read_traffic(str(tmp_path / "log.sqlite"), DAY.since, DAY.until)
    one = read_traffic(str(tmp_path / "log.sqlite"), DAY.since, DAY.until, model="run")
    assert dict(both.models) == {"run": 2, "other": 1} and sorted(one.inputs.items) == ["p0", "p2"]


def test_the_same_window_reads_the_same_from_postgresql(postgres: str) -> None:
    rng = random.Random(4)
    texts = [support_text(rng) for _ in range(25)]
    log = RequestLog(postgres)
    for i, text in enumerate(texts):
        log.log_request(
            id=f"c{i}",
            time=START + timedelta(minutes=i // 3),
            model="run",
            endpoint="classify",
            status=200,
            latency_ms=5.0,
            prompt=json.dumps([text]),
            response=json.dumps([{"index": 0, "label": "b", "probabilities": {"b": 0.9, "a": 0.1}}]),
        )
    log.log_feedback(request_id="c1", key_name="k", rating=4, time=START)
    log.close()
    traffic = read_traffic(postgres, DAY.since, DAY.until, page=4)
    assert (traffic.requests, traffic.input_count, traffic.feedback) == (25, 25, 1)
    assert sorted(traffic.inputs.items) == sorted(texts) and traffic.labels == {"b": 25}


def test_embeddings_are_cached_by_text_hash(tmp_path: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "embeddings.sqlite"
    first = Embedder(str(tiny_bert), cache)
    v1 = first.embed(["my order", "my refund", "my order"])
    assert first.computed == 2 and v1.shape == (3, 32)
    assert np.allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5) and np.array_equal(v1[0], v1[2])
    again = Embedder(str(tiny_bert), cache)  # a later run: only the new text is embedded
    v2 = again.embed(["my refund", "the match", "my order"])
    assert again.computed == 1
    assert np.array_equal(v2[0], v1[1]) and np.array_equal(v2[2], v1[0])


def test_the_embedding_cache_forgets_what_no_run_used_for_60_days_and_stays_bounded(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from tuneforge.monitor import embed

    cache = tmp_path / "embeddings.sqlite"
    day = [20_000]
    monkeypatch.setattr(embed, "_today", lambda: day[0])
    # A cache written before vectors recorded their last use: kept, as used today.
    old = sqlite3.connect(cache)
    old.execute("CREATE TABLE vectors (model TEXT, hash TEXT, vector BLOB, PRIMARY KEY (model, hash))")
    old.execute("INSERT INTO vectors VALUES ('other-model', 'h', x'00000000')")
    old.commit()
    old.close()
    Embedder(str(tiny_bert), cache).embed(["old day's text", "training text"])

    def kept() -> set[str]:
        with sqlite3.connect(cache) as conn:
            return {h for (h,) in conn.execute("SELECT hash FROM vectors")}

    assert "h" in kept() and len(kept()) == 3
    day[0] += 59  # the training sample is embedded (used) again; the old live text is not
    Embedder(str(tiny_bert), cache).embed(["training text", "new text"])
    assert len(kept()) == 4
    day[0] += 2  # 61 days after its last use: gone, with the other model's vector from the old cache
    again = Embedder(str(tiny_bert), cache)
    again.embed(["training text"])
    assert again.computed == 0 and len(kept()) == 2
    assert embed.hashlib.sha256(b"old day's text").hexdigest() not in kept()
    monkeypatch.setattr(embed, "MAX_VECTORS", 2)
    day[0] += 1
    Embedder(str(tiny_bert), cache).embed(["a third text"])  # over the cap: the least recently used goes
    assert kept() == {embed.hashlib.sha256(t.encode()).hexdigest() for t in ("training text", "a third text")}


def test_a_missing_or_unreachable_log_is_one_clear_message(tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError) as err:
        read_traffic(str(tmp_path / "typo.sqlite"), DAY.since, DAY.until)
    assert err.value.render().startswith(f"--log: the request log {tmp_path / 'typo.sqlite'} does not exist")
    assert not (tmp_path / "typo.sqlite").exists()  # not created as an empty database
    with pytest.raises(TuneforgeError) as err:
        read_traffic("postgresql+psycopg://u:secret@127.0.0.1:1/db", DAY.since, DAY.until)
    shown = err.value.render()
    assert shown.startswith("--log: cannot read the request log 'postgresql+psycopg://u:***@127.0.0.1:1/db'")
    assert "secret" not in shown and "fix: check that the database is running" in shown


def test_a_moved_project_names_its_runs_gone_dataset_folder_and_takes_data_path(
    tmp_path: Path, tiny_bert: Path
) -> None:
    """A run trained before runs recorded their dataset's place relative to the run knows only its absolute
    path; moved with its project, the monitor names that folder as gone instead of asking for a `prepare`."""
    from tuneforge.errors import TuneforgeError

    make_run(tmp_path / "before", tiny_bert)
    after = (tmp_path / "before").rename(tmp_path / "after")
    run, gone = after / "run", tmp_path / "before" / "dataset"
    log = write_log(tmp_path / "log.sqlite", ["my order please"] * 3, ["a"] * 3)
    with pytest.raises(TuneforgeError) as err:
        monitor(run, log, DAY, _cfg(run))
    assert err.value.render() == (
        f"{run / 'manifest.json'} (dataset.path): the dataset folder that run {run} trained on, {gone}, is "
        "gone: the run or its project folder may have moved (this run recorded only the dataset's absolute "
        "path)\n"
        "  fix: point at the prepared dataset where it is now: add --set data.path=DIR to the tuneforge "
        f"monitor command, or move it back to {gone}"
    )
    result, _, _ = monitor(run, log, DAY, _cfg(run), data_path=str(after / "dataset"))
    assert (
        result["reference"]["dataset"] == str(after / "dataset") and result["reference"]["train_size"] == 300
    )


@pytest.mark.slow
def test_the_builtin_minilm_tells_other_topic_prompts_from_training_prompts() -> None:
    from tuneforge.monitor.drift import domain_classifier

    embedder = Embedder("builtin:minilm-l6", None)
    rng = random.Random(0)
    ref = embedder.embed([support_text(rng) for _ in range(100)])
    same = embedder.embed([support_text(rng) for _ in range(100)])
    other = embedder.embed([sports_text(rng) for _ in range(100)])
    assert ref.shape == (100, 384)
    kw = {"need": 100, "alpha": 0.05, "permutations": 99, "min_auc": 0.55}
    assert domain_classifier(ref, same, **kw).drift is False
    shifted = domain_classifier(ref, other, **kw)
    assert shifted.drift is True and shifted.statistic is not None and shifted.statistic > 0.95


def test_a_chat_generator_gets_answer_length_empty_answers_and_finish_reasons(
    tmp_path: Path, tiny_bert: Path
) -> None:
    import yaml

    from tuneforge.artifacts import sha256_file, write_jsonl

    run = make_run(tmp_path, tiny_bert)
    data = tmp_path / "dataset"
    rng = random.Random(5)
    chats = [
        {
            "messages": [
                {"role": "user", "content": support_text(rng)},
                {"role": "assistant", "content": "ok " * 5},
            ]
        }
        for _ in range(200)
    ]
    write_jsonl(data / "train.jsonl", chats)
    (data / "validation.jsonl").unlink()
    manifest = {
        "kind": "tuneforge.dataset",
        "format": "chat",
        "files": {"train.jsonl": sha256_file(data / "train.jsonl")},
    }
    (data / "manifest.json").write_text(json.dumps(manifest))
    run_manifest = json.loads((run / "manifest.json").read_text())
    run_manifest.update(
        task="causal-lm", labels=[], dataset={"path": str(data), "format": "chat", "files": manifest["files"]}
    )
    (run / "manifest.json").write_text(json.dumps(run_manifest))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["task"] = "causal-lm"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))

    log = RequestLog(f"sqlite:///{tmp_path / 'log.sqlite'}")
    for i in range(120):
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": support_text(rng)}]
        # much longer than trained, a quarter empty and a sixth refusals
        answer = "" if i % 4 == 0 else "I can't help with that." if i % 6 == 1 else "ok " * 40
        log.log_request(
            id=f"chat-{i}", time=START + timedelta(minutes=i), model="run", endpoint="chat", status=200,
            finish_reason="length" if answer else "stop", prompt=json.dumps(messages),
            response=json.dumps([answer]),
        )  # fmt: skip
    log.close()
    result, alerts, _ = monitor(run, str(tmp_path / "log.sqlite"), DAY, _cfg(run))
    out = result["output"]
    assert out["empty_rate"] == 0.25 and out["finish_reasons"] == {"length": 90, "stop": 30}
    assert out["refusal_rate"] == {"live": 20 / 120, "reference": 0.0}
    md = (run / "monitor" / DAY.name / "report.md").read_text()
    assert (
        "- refusals (answer opens like one in en, de, fr or es; a heuristic): 16.67% "
        "(training answers: 0.00%)" in md
    )
    assert out["answer_tokens"]["live"]["n"] == 120 and out["answer_tokens"]["reference"]["n"] == 200
    t = result["tests"]["answer_length_drift"]
    assert (t["test"], t["drift"]) == ("two-sample Kolmogorov-Smirnov", True)
    assert "answer_length_drift" in [a.metric for a in alerts] and "label_drift" not in result["tests"]
    assert result["input"]["prompt_tokens"]["live"]["n"] == 120  # the user's side: system and user turns


def test_a_language_model_taught_classification_is_compared_with_the_prompts_it_was_asked(
    tmp_path: Path, tiny_bert: Path
) -> None:
    """A causal LM that learned classification records is asked live with data.prompt_template filled in;
    its reference must read the same, or every in-distribution prompt looks like drift."""
    import yaml

    from tuneforge.artifacts import RunDir
    from tuneforge.monitor.reference import load_reference

    run = make_run(tmp_path, tiny_bert)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["task"] = "causal-lm"
    cfg["data"]["prompt_template"] = "Which of {labels}?\n{text}"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "task": "causal-lm"}))
    train = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").read_text().splitlines()]
    ref = load_reference(RunDir.open(run), max_reference=10_000)
    assert sorted(ref.inputs) == sorted(f"Which of a, b, c?\n{r['text']}" for r in train)
    assert all(h.startswith("Which of a, b, c?\n") for h in ref.held_out)
    # a classification head is sent the bare text (POST /v1/classify): unchanged
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert sorted(load_reference(RunDir.open(run), max_reference=10_000).inputs) == sorted(
        r["text"] for r in train
    )


def test_a_language_model_taught_classification_has_its_chat_answers_read_as_labels(
    tmp_path: Path, tiny_bert: Path
) -> None:
    """Served as chat, a generative classifier answers with label text: the predicted-label mix reads the
    labels from the answers (as evaluation does) and the answer lengths compare with the labels it learned."""
    import yaml

    run = make_run(tmp_path, tiny_bert)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["task"] = "causal-lm"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "task": "causal-lm"}))
    train = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").read_text().splitlines()]

    def serve(path: Path, answers: list[str]) -> dict:
        log = RequestLog(f"sqlite:///{path}")
        rng = random.Random(5)
        for i, answer in enumerate(answers):
            prompt = [{"role": "user", "content": f"Which of a, b, c?\n{support_text(rng)}"}]
            log.log_request(
                id=f"chat-{i}", time=START + timedelta(minutes=i), model="run", endpoint="chat", status=200,
                finish_reason="stop", prompt=json.dumps(prompt), response=json.dumps([answer]),
            )  # fmt: skip
        log.close()
        return monitor(run, str(path), DAY, _cfg(run))[0]

    # As trained: each label about as often as in training, answered with the label alone.
    as_trained = [str(r["label"]) for r in train][:150]
    result = serve(tmp_path / "same.sqlite", as_trained)
    labels = result["output"]["labels"]
    assert labels["live"] == {x: as_trained.count(x) for x in set(as_trained)}
    assert labels["read_from_answers"] == 150
    assert (
        result["tests"]["label_drift"]["n_live"] == 150 and result["tests"]["label_drift"]["drift"] is False
    )
    assert result["output"]["answer_tokens"]["reference"]["n"] == len(train)  # the labels it learned to say
    assert result["tests"]["answer_length_drift"]["drift"] is False

    # Drifted: most answers say "a" in a sentence, a fifth name no label at all.
    drifted = ["I would say a." if i % 5 else "It is hard to tell from this text." for i in range(150)]
    result = serve(tmp_path / "drift.sqlite", drifted)
    assert result["output"]["labels"]["live"] == {"a": 120, "(no label)": 30}
    assert result["tests"]["label_drift"]["drift"] is True
    assert result["tests"]["answer_length_drift"]["drift"] is True
    md = (run / "monitor" / DAY.name / "report.md").read_text()
    assert "live labels read from 150 generated answers" in md and "| (no label) | 0.00% | 20.00% |" in md


def test_accuracy_on_corrected_labels_counts_rated_classify_answers(tmp_path: Path) -> None:
    from tuneforge.monitor.report import service_blocks
    from tuneforge.monitor.run import service_section

    log = RequestLog(f"sqlite:///{tmp_path / 'log.sqlite'}")
    for i in range(4):
        log.log_request(id=f"c{i}", time=START, model="run", endpoint="classify", status=200, prompt='["x"]')
    log.log_request(id="chat", time=START, model="run", endpoint="chat", status=200, prompt="[]")
    for i, correction in enumerate(['"b"', None, None, None]):
        log.log_feedback(request_id=f"c{i}", key_name="k", rating=1, time=START, correction=correction)
    log.log_feedback(request_id="chat", key_name="k", rating=-1, time=START, correction='"better"')
    log.close()
    traffic = read_traffic(str(tmp_path / "log.sqlite"), DAY.since, DAY.until, page=2)
    assert (traffic.feedback, traffic.rated_labels, traffic.corrected_labels) == (5, 4, 1)
    section = service_section(traffic)
    assert section["accuracy_on_corrected_labels"] == 0.75
    rows = service_blocks(section)[0][1][1]
    assert rows[-1] == [
        "accuracy on corrected labels (rated classify answers needing no correction)",
        "75.00% (n = 4)",
    ]


def test_a_switch_of_script_and_of_language_is_drift_in_the_prompt_script_and_language_mix(
    tmp_path: Path, tiny_bert: Path
) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(3)
    words = ["заказ", "возврат", "телефон", "сломан", "поздно", "холодный", "быстро"]
    russian = ["мой " + " ".join(rng.choices(words, k=4)) + " order" for _ in range(60)]
    # German in the Latin script: the script mix cannot see it, the language mix does.
    german = [
        "mein Paket ist noch nicht angekommen, bitte helfen Sie mir",
        "ich möchte meine Bestellung zurückgeben und das Geld wiederhaben",
        "das Telefon ist kaputt und der Kundendienst antwortet nicht",
    ] * 10
    texts = [support_text(rng) for _ in range(60)] + german + russian
    write_log(tmp_path / "log.sqlite", texts, ["abc"[i % 3] for i in range(150)])
    result, _, html = monitor(run, str(tmp_path / "log.sqlite"), DAY, _cfg(run))
    assert result["input"]["scripts"] == {"reference": {"Latin": 300}, "live": {"Latin": 90, "Cyrillic": 60}}
    langs = result["input"]["languages"]
    # A bag of Russian words is not always Russian to a detector: one reads as Bulgarian (same script).
    assert langs["live"] == {"en": 60, "de": 30, "ru": 59, "bg": 1}
    # Two short English support texts the detector is not sure of are undetermined (one read as Frisian at
    # a lower confidence floor), not a language of their own.
    assert langs["reference"] == {"en": 298, "und": 2}
    t = result["tests"]["language_mix_drift"]
    assert (t["test"], t["drift"], t["n_live"]) == ("chi-squared", True, 150)
    t = result["tests"]["script_mix_drift"]
    assert (t["test"], t["drift"], t["n_reference"], t["n_live"]) == (
        "chi-squared",
        True,
        300,
        150,
    )
    md = html.with_name("report.md").read_text()
    assert "| Cyrillic | 0.00% | 40.00% |" in md and "| Latin | 100.00% | 60.00% |" in md
    assert "| de | 0.00% | 20.00% |" in md and "| ru | 0.00% | 39.33% |" in md


def test_the_report_compares_shadow_answers_with_the_champions_on_the_same_requests(tmp_path: Path) -> None:
    from tuneforge.monitor.report import shadow_blocks
    from tuneforge.monitor.run import shadow_section

    log = RequestLog(f"sqlite:///{tmp_path / 'log.sqlite'}")
    for i in range(4):
        label = json.dumps([{"index": 0, "label": "a"}, {"index": 1, "label": "b"}])
        log.log_request(id=f"c{i}", time=START, model="run", endpoint="classify", status=200, response=label)
        theirs = [{"index": 0, "label": "a"}, {"index": 1, "label": "b" if i < 2 else "c"}]
        log.log_shadow(
            id=f"s{i}", shadow_of=f"c{i}", time=START, model="reg", model_version=2, endpoint="classify",
            status=200 if i < 3 else 500, response=json.dumps(theirs),
        )  # fmt: skip
    for i, (ours, theirs) in enumerate([("hello", "hello"), ("hi there", "hey"), ("x", "x")]):
        log.log_request(
            id=f"g{i}", time=START, model="run", endpoint="chat", status=200, response=json.dumps([ours])
        )
        log.log_shadow(
            id=f"t{i}", shadow_of=f"g{i}", time=START, model="reg", model_version=3, endpoint="chat",
            status=200, response=json.dumps([theirs]),
        )  # fmt: skip
    log.log_shadow(id="late", shadow_of="c0", time=START + timedelta(days=1), model="reg", status=200)
    log.log_shadow(id="lost", shadow_of="nope", time=START, model="reg", status=200)
    log.close()
    traffic = read_traffic(str(tmp_path / "log.sqlite"), DAY.since, DAY.until, page=2)
    section = shadow_section(traffic)
    assert section == [
        {
            "shadow": "reg v2", "n": 4, "failed": 1, "labels": 6, "label_agreement": 5 / 6,
            "answers": 0, "exact_match": None, "champion_mean_chars": None, "shadow_mean_chars": None,
        },
        {
            "shadow": "reg v3", "n": 3, "failed": 0, "labels": 0, "label_agreement": None,
            "answers": 3, "exact_match": 2 / 3, "champion_mean_chars": 14 / 3, "shadow_mean_chars": 3.0,
        },
    ]  # fmt: skip
    assert shadow_blocks(section)[1][1][1] == [
        ["reg v2", 4, 1, "83.33% (n = 6)", "", "", ""],
        ["reg v3", 3, 0, "", "66.67% (n = 3)", "4.67", "3"],
    ]
    assert (
        shadow_section(read_traffic(str(tmp_path / "log.sqlite"), DAY.since, DAY.until, model="other")) == []
    )
