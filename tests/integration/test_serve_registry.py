"""`tuneforge serve registry:NAME` as a process: promotions and rollbacks while requests are in flight.

The tests run in file order on one server: promote 1 → 2, roll back 2 → 1, break the pointer, then check
what version 2 answered as the shadow (serve.shadow) of version 1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.test_serve import HELLO, RUN_CONFIG, Server, _local_answer
from tests.tiny import sentiment_rows, write_csv
from tuneforge.registry import Registry
from tuneforge.serve.store import database_url, read_table

SERVE_CONFIG = """\
serve:
  model: registry:support
  registry_root: {root}/registry
  registry_poll_s: 0.2
  log_db: {root}/log.sqlite
  max_new_tokens: 40
  max_queue: 16
  max_concurrent_per_key: 16
  shadow: registry:support@challenger
  shadow_fraction: 1.0
"""
MAX_TOKENS = 40
WORKERS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[dict[str, Any]]:
    """Two LoRA runs of the tiny Llama registered as versions 1 and 2 of `support`, version 1 served."""
    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset
    from tuneforge.serve.keys import KeyFile
    from tuneforge.train import train

    root = tmp_path_factory.mktemp("serve-registry")
    write_csv(root / "data.csv", sentiment_rows(60))
    reg = Registry.at(root / "registry", "support")
    answers, runs = {}, {}
    for version, seed in ((1, 1), (2, 2)):
        path = root / f"v{version}.yaml"
        text = RUN_CONFIG.format(
            root=root,
            model=tiny_llama,
            task="causal-lm",
            name=f"run{version}",
            lr=0.05,
            seed=seed,
            dtype="auto",
        )
        path.write_text(text)
        cfg, source = load_config(path)
        prepare_dataset(cfg.data, model=cfg.model)
        run = runs[version] = train(cfg, source).path
        assert reg.register(run)["version"] == version
        answers[version] = _local_answer(run, HELLO, MAX_TOKENS)[0]
    assert answers[1] != answers[2]  # which version answered is read off the text
    reg.promote(1, "first")
    key = KeyFile(root / "keys.json").create("alice")
    (root / "serve.yaml").write_text(SERVE_CONFIG.format(root=root))
    server = Server(root, "--config", "serve.yaml", "--keys", str(root / "keys.json"))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    yield {
        "root": root,
        "reg": reg,
        "server": server,
        "client": client,
        "key": key,
        "answers": answers,
        "runs": runs,
    }
    server.stop()


def ready(world: dict[str, Any]) -> dict[str, Any]:
    r = httpx.get(f"{world['server'].url}/ready", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_for(what: Callable[[], bool], seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def traffic_during(world: dict[str, Any], change: Callable[[], None], new: int) -> dict[str, Any]:
    """Streamed and whole chat requests from WORKERS threads, back to back, before and after `change`,
    until /ready shows version `new` (and a little beyond)."""
    client, stop = world["client"], threading.Event()
    done: list[dict[str, Any]] = []
    failed: list[BaseException] = []

    def worker(stream: bool) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                kw: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0}
                reply = client.chat.completions.create(model="support", messages=HELLO, stream=stream, **kw)
                if stream:
                    chunks = list(reply)
                    rid = chunks[0].id
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    rid, text = reply.id, reply.choices[0].message.content
            except BaseException as err:  # every failure is a finding: none may happen
                failed.append(err)
                continue
            done.append({"id": rid, "start": start, "end": time.monotonic(), "text": text, "stream": stream})

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(done) >= WORKERS)  # traffic on the old version first
        change()
        wait_for(lambda: ready(world)["registry"]["version"] == new)
        switched = time.monotonic()
        wait_for(lambda: {d["stream"] for d in done if d["start"] > switched} == {True, False})
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failed == []
    by_text = {text: v for v, text in world["answers"].items()}
    for d in done:
        assert d["text"] in by_text, d  # the whole answer of one version, never a mix
        d["version"] = by_text[d["text"]]
    return {"done": done, "switched": switched}


def logged_versions(world: dict[str, Any], ids: list[str]) -> dict[str, int | None]:
    """The log's model_version of each request, once the writer has written them all."""
    url = database_url(str(world["root"] / "log.sqlite"))
    found: dict[str, int | None] = {}

    def all_written() -> bool:
        found.update({r["id"]: r["model_version"] for r in read_table(url)})
        return set(ids) <= set(found)

    wait_for(all_written)
    return {i: found[i] for i in ids}


def check_switch(world: dict[str, Any], traffic: dict[str, Any], old: int, new: int) -> None:
    done, switched = traffic["done"], traffic["switched"]
    assert {d["version"] for d in done} == {old, new}
    assert {d["stream"] for d in done if d["version"] == new} == {True, False}
    # Requests started once /ready showed the new version are all answered by it ...
    assert {d["version"] for d in done if d["start"] > switched} == {new}
    # ... and some that were in flight on the old one when the new one took over finished there.
    first_new = min(d["start"] for d in done if d["version"] == new)
    assert any(d["version"] == old and d["end"] > first_new for d in done)
    # The log says which version answered each request.
    logged = logged_versions(world, [d["id"] for d in done])
    assert logged == {d["id"]: d["version"] for d in done}


def metrics(world: dict[str, Any]) -> str:
    headers = {"Authorization": f"Bearer {world['key']}"}
    return httpx.get(f"{world['server'].url}/metrics", headers=headers, timeout=10).text


def monitor_report(run: Path, auc: float, drift: bool) -> None:
    """The parts of RUN/monitor/<window>/report.json the server reads (`tuneforge monitor` writes all)."""
    from tuneforge.artifacts import write_json_atomic

    tests = {
        "embedding_drift": {"statistic": auc, "p_value": 0.002, "drift": drift},
        "label_drift": {"statistic": None, "p_value": None, "drift": None},  # not enough data: no gauge
    }
    window = {"name": "2026-12-01T0000Z_2026-12-02T0000Z", "until": "2026-12-02T00:00:00+00:00"}
    body = {"tests": tests, "window": window, "alerts": [{"metric": "embedding_drift"}] if drift else []}
    write_json_atomic(run / "monitor" / window["name"] / "report.json", body)


def test_the_champion_is_served_under_the_registry_name(world) -> None:
    assert [m.id for m in world["client"].models.list().data] == ["support"]
    assert ready(world)["registry"] == {"name": "support", "version": 1, "shadow_version": 2}
    reply = world["client"].chat.completions.create(
        model="support", messages=HELLO, max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.model == "support" and reply.choices[0].message.content == world["answers"][1]
    r = httpx.get(
        f"{world['server'].url}/metrics", headers={"Authorization": f"Bearer {world['key']}"}, timeout=10
    )
    assert 'tuneforge_model_version{model="support"} 1.0' in r.text
    assert 'tuneforge_registry_pointer_ok{model="support"} 1.0' in r.text
    assert "tuneforge_drift_score{" not in r.text  # no monitor report yet
    # A monitor run of the served version writes its report: the running server shows its scores at once.
    monitor_report(world["runs"][1], auc=0.93, drift=True)
    drift = [line for line in metrics(world).splitlines() if line.startswith("tuneforge_drift")]
    assert drift == [
        'tuneforge_drift_score{model="support",test="embedding_drift"} 0.93',
        'tuneforge_drift_p_value{model="support",test="embedding_drift"} 0.002',
        'tuneforge_drift_alert{model="support",test="embedding_drift"} 1.0',
    ]
    with pytest.raises(openai.NotFoundError, match="The model 'tiny-llama' does not exist"):
        world["client"].chat.completions.create(model="tiny-llama", messages=HELLO, max_tokens=4)


def test_a_promotion_with_requests_in_flight(world) -> None:
    traffic = traffic_during(world, lambda: world["reg"].promote(2, "better on the frozen test set"), new=2)
    check_switch(world, traffic, old=1, new=2)
    log = world["server"].log
    wait_for(lambda: "version 1 finished its last request in flight and was unloaded" in log.read_text())
    r = httpx.get(
        f"{world['server'].url}/metrics", headers={"Authorization": f"Bearer {world['key']}"}, timeout=10
    )
    assert 'tuneforge_model_version{model="support"} 2.0' in r.text
    # The drift scores are the served version's: version 2 has no monitor report yet, version 1's are gone.
    assert "tuneforge_drift_score{" not in r.text


def test_a_rollback_with_requests_in_flight(world) -> None:
    assert ready(world)["registry"]["version"] == 2
    traffic = traffic_during(world, lambda: world["reg"].rollback("complaints"), new=1)
    check_switch(world, traffic, old=2, new=1)
    assert 'tuneforge_drift_score{model="support",test="embedding_drift"} 0.93' in metrics(world)


def test_a_corrupt_pointer_keeps_the_version_and_ready_says_why(world) -> None:
    reg, client = world["reg"], world["client"]
    assert ready(world)["registry"] == {"name": "support", "version": 1, "shadow_version": 2}
    good = reg.pointer.read_text()
    reg.pointer.write_text('{"version": 2, "stack": [1, 2')  # a hand edit cut short
    # write_text empties the file before it writes: the server may read it empty first (and says so), then
    # reads the edit itself.
    wait_for(lambda: "delimiter" in ready(world)["registry"].get("problem", ""))
    assert ready(world)["registry"] == {
        "name": "support",
        "version": 1,
        "shadow_version": 2,
        "problem": "the champion pointer of registry 'support' is corrupt (Expecting ',' delimiter: line 1 "
        "column 30 (char 29)); version 1 goes on serving",
    }
    reply = client.chat.completions.create(
        model="support", messages=HELLO, max_tokens=MAX_TOKENS, temperature=0
    )
    assert reply.choices[0].message.content == world["answers"][1]
    assert logged_versions(world, [reply.id]) == {reply.id: 1}
    assert (
        "registry support: the champion pointer of registry 'support' is corrupt"
        in world["server"].log.read_text()
    )
    r = httpx.get(
        f"{world['server'].url}/metrics", headers={"Authorization": f"Bearer {world['key']}"}, timeout=10
    )
    assert 'tuneforge_registry_pointer_ok{model="support"} 0.0' in r.text
    reg.pointer.write_text(good)
    wait_for(lambda: "problem" not in ready(world)["registry"])
    assert ready(world)["registry"] == {"name": "support", "version": 1, "shadow_version": 2}


def test_the_shadow_answered_the_champions_requests_only_into_the_log(world) -> None:
    """serve.shadow (version 2, every request): it answered each request version 1 answered, never one that
    version 2 answered as the champion itself; the users saw only the champion's answers (checked above)."""
    assert ready(world)["registry"]["shadow_version"] == 2
    url = database_url(str(world["root"] / "log.sqlite"))
    answered = [r for r in read_table(url) if r["endpoint"] == "chat" and r["status"] == 200]
    by_v1 = {r["id"] for r in answered if r["model_version"] == 1}
    assert len(by_v1) > WORKERS and any(r["model_version"] == 2 for r in answered)

    def skipped() -> int:
        r = httpx.get(
            f"{world['server'].url}/metrics", headers={"Authorization": f"Bearer {world['key']}"}, timeout=10
        )
        line = next(
            (
                x
                for x in r.text.splitlines()
                if x.startswith('tuneforge_shadow_requests_total{status="skipped"}')
            ),
            None,
        )
        return int(float(line.split()[-1])) if line else 0

    shadows: list[dict[str, Any]] = []

    def all_answered() -> bool:  # a shadow answer, or a sample skipped while the shadow was busy
        shadows[:] = read_table(url, "shadow")
        return len(shadows) + skipped() >= len(by_v1)

    wait_for(all_answered)
    assert len(shadows) + skipped() == len(by_v1), (len(shadows), skipped(), len(by_v1))
    assert {s["shadow_of"] for s in shadows} <= by_v1 and len({s["shadow_of"] for s in shadows}) == len(
        shadows
    )
    assert {(s["model"], s["model_version"], s["status"], s["endpoint"]) for s in shadows} == {
        ("support", 2, 200, "chat")
    }
    assert {s["response"] for s in shadows} == {json.dumps([world["answers"][2]], ensure_ascii=False)}
