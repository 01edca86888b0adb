"""Token lengths as the model sees them: equal to what the model stage encodes, for every task and format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import TOKENIZER
from tuneforge.config import DataConfig, ModelConfig
from tuneforge.data import prepare_dataset
from tuneforge.data.lengths import LengthMeter, token_counter
from tuneforge.models import load_tokenizer
from tuneforge.models.encode import encoder

# A SmolLM2-style template: a default system prompt when the conversation brings none.
SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant, answer the user.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROMPT = "Classify the text into one of these labels: {labels}.\nText: {text}\nAnswer with the label only."
LABELS = ["negative", "positive"]
RECORDS: dict[str, dict[str, Any]] = {
    "chat": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello, how are you?"},
            {"role": "assistant", "content": "good"},
            {"role": "user", "content": "and today?"},
            {"role": "assistant", "content": "fine, thank you"},
        ]
    },
    "instruction": {"instruction": "Say hello", "input": "to the world", "output": "hello world"},
    "classification": {"text": "the phone is great and the battery lasts", "label": "positive"},
    "preference": {
        "prompt": "Which is better?",
        "chosen": "the quick fox",
        "rejected": "the lazy dog, twice",
    },
    "text": {"text": "The quick brown fox jumps over the lazy dog."},
    "regression": {"text": "the service was terrible", "label": 0.25},
}
CASES = [("causal-lm", fmt) for fmt in ("chat", "instruction", "classification", "preference", "text")] + [
    ("classification", "classification"),
    ("regression", "regression"),
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelConfig]:
    """The tiny tokenizer as shipped, with a system-prompt template, and with BOS/EOS around every text."""
    from tokenizers import Tokenizer, processors

    root = tmp_path_factory.mktemp("tokenizers")
    system = shutil.copytree(TOKENIZER, root / "system")
    (system / "chat_template.jinja").write_text(SYSTEM_TEMPLATE, encoding="utf-8")
    wrapped = shutil.copytree(TOKENIZER, root / "wrapped")
    (wrapped / "chat_template.jinja").unlink()  # and the named chatml template instead
    tok = Tokenizer.from_file(str(wrapped / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)]
    )
    tok.save(str(wrapped / "tokenizer.json"))
    return {
        "tiny": ModelConfig(name=str(TOKENIZER)),
        "system": ModelConfig(name=str(system)),
        "wrapped": ModelConfig(name=str(wrapped), chat_template="chatml"),
    }


@pytest.mark.parametrize("which", ["tiny", "system", "wrapped"])
@pytest.mark.parametrize(("task", "fmt"), CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_counted_length_is_the_encoded_length(
    tokenizers: dict[str, ModelConfig], which: str, task: str, fmt: str
) -> None:
    model = tokenizers[which].model_copy(update={"task": task})
    meter = LengthMeter(token_counter(model), task, PROMPT)
    tok = load_tokenizer(model)
    encode = encoder(tok, task=task, fmt=fmt, labels=LABELS, max_length=10**6, template=PROMPT)
    record = RECORDS[fmt]
    example = encode(record)
    # A preference record encodes as a pair; the data stage measures its longer side.
    expected = max(len(example.get(side, example)["input_ids"]) for side in ("chosen", "rejected"))
    assert meter.lengths([record], fmt, LABELS) == [expected]
    if which == "wrapped" and task != "causal-lm":  # the special tokens around the text count
        assert expected == len(tok(record["text"], add_special_tokens=False)["input_ids"]) + 2
    if which == "system" and task == "causal-lm" and fmt not in ("text", "chat"):  # chat brings its own
        plain = LengthMeter(token_counter(tokenizers["tiny"]), task, PROMPT)
        assert expected > plain.lengths([record], fmt, LABELS)[0] + 10  # the default system prompt


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def written(ds: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for split in ("train", "validation", "test")
        for line in (ds / f"{split}.jsonl").read_text().splitlines()
    ]


def reviews(n: int) -> list[dict[str, Any]]:
    words = ["battery", "screen", "camera", "price", "service", "delivery", "sound", "case", "charger"]
    return [
        {
            "text": f"review {i}: the {words[i % 9]} and the {words[(i * 5) % 9]} were ok",
            "label": LABELS[i % 2],
        }
        for i in range(n)
    ]


def test_the_chat_template_and_prompt_count_in_prepare(
    tokenizers: dict[str, ModelConfig], tmp_path: Path
) -> None:
    # Each text alone fits in 30 tokens; with the system prompt and the classification prompt none does.
    model = tokenizers["system"].model_copy(update={"max_length": 30})
    rows = reviews(24)
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), prompt_template=PROMPT), model=model
    )
    tok = load_tokenizer(model)
    encode = encoder(
        tok, task="causal-lm", fmt="classification", labels=LABELS, max_length=10**6, template=PROMPT
    )
    kept = written(ds.path)
    expected = sorted(len(encode(r)["input_ids"]) for r in kept)
    assert max(len(tok(r["text"])["input_ids"]) for r in rows) <= 30 < expected[0]
    tl = ds.manifest["token_lengths"]
    assert (tl["all"]["min"], tl["all"]["max"], tl["all"]["total"]) == (
        expected[0],
        expected[-1],
        sum(expected),
    )
    assert tl["measured_as"] == "conversation rendered by the chat template with data.prompt_template"
    assert tl["cut_when_encoded"]["all"] == len(kept) == ds.manifest["counts"]["truncated"]
    report = (ds.path / "report.md").read_text()
    assert f"{len(kept)} of {len(kept)} rows (100%) are longer than max_tokens=30" in report


def test_prompts_measured_before_every_label_was_seen_are_measured_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tuneforge.data.prepare as prepare

    monkeypatch.setattr(prepare, "BATCH", 4)  # the labels appear batch by batch (the file is sorted by label)
    labels = ["alpha", "beta", "gamma"]
    rows = [{"text": f"item {i} of the list number {i * 7}", "label": labels[i // 6]} for i in range(18)]
    src = write_jsonl(tmp_path / "sorted.jsonl", rows)
    model = ModelConfig(name=str(TOKENIZER))
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), dedup="none"), model=model
    )
    encode = encoder(
        load_tokenizer(model), task="causal-lm", fmt="classification", labels=labels, max_length=10**6,
        template=DataConfig().prompt_template,
    )  # fmt: skip
    assert ds.manifest["token_lengths"]["all"]["total"] == sum(len(encode(r)["input_ids"]) for r in rows)


def test_long_documents_are_kept_by_default_and_dropped_only_when_asked(tmp_path: Path) -> None:
    # Topic classification of articles: a third are longer than the model's window.
    rows = [
        {"text": " ".join(f"w{i}x{k}" for k in range(60 if i % 3 == 0 else 8)), "label": LABELS[i % 2]}
        for i in range(30)
    ]
    src = write_jsonl(tmp_path / "news.jsonl", rows)
    model = ModelConfig(name=str(TOKENIZER), task="classification", max_length=64)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds")), model=model)
    counts = ds.manifest["counts"]
    assert counts["written"] == 30 and "too_many_tokens" not in counts and counts["truncated"] == 10
    assert {r["text"] for r in written(ds.path)} == {r["text"] for r in rows}  # whole, cut when encoded
    dropped = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "dropped"), over_length="drop"), model=model
    )
    assert dropped.manifest["counts"]["too_many_tokens"] == 10 and dropped.manifest["counts"]["written"] == 20


def test_a_conversation_too_long_ends_after_the_last_answer_that_fits(tmp_path: Path) -> None:
    def turn(role: str, words: int, i: int) -> dict[str, str]:
        return {"role": role, "content": " ".join(f"{role}{i}w{k}" for k in range(words))}

    rows = [{"messages": [turn("user", 3, i), turn("assistant", 3, i)]} for i in range(11)]
    long = [turn("user", 4, 99), turn("assistant", 4, 99), turn("user", 4, 100), turn("assistant", 30, 100)]
    rows.append({"messages": long})
    src = write_jsonl(tmp_path / "chat.jsonl", rows)
    ds = prepare_dataset(DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), max_tokens=20))
    assert {"messages": long[:2]} in written(ds.path)
    tl = ds.manifest["token_lengths"]
    assert tl["truncated_at_turn"] == 1 and ds.manifest["counts"]["truncated"] == 1
    assert "cut at a turn boundary: 1" in (ds.path / "report.md").read_text()


def test_what_lengths_depend_on_is_part_of_the_fingerprint(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "r.jsonl", reviews(12))
    cfg = DataConfig(path=str(src), output_dir=str(tmp_path / "ds"))
    models = [
        ModelConfig(name=str(TOKENIZER)),
        ModelConfig(name=str(TOKENIZER), task="classification"),
        ModelConfig(name=str(TOKENIZER), chat_template="chatml"),
    ]
    fingerprints = [prepare_dataset(cfg, model=m).manifest["fingerprint"] for m in models]
    assert len(set(fingerprints)) == 3  # each one prepared again, not reused


def test_counting_a_rendering_by_its_parts_equals_counting_it_whole(tmp_path: Path) -> None:
    import re

    from tuneforge.data.lengths import TokenCounter

    counter = token_counter(ModelConfig(name=str(TOKENIZER)))
    contents = ["a\nb", "x \n y", "two\n\nlines", " lead", "trail ", "<|im_end|>inside", "12\n34", "é\nü", ""]
    conversations = [
        [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        for u in contents
        for a in contents
    ]
    rendered = counter.render(conversations) * 2  # repeated parts are counted once, then from the cache
    assert counter.count_rendered(rendered) == counter.count(rendered)
    assert isinstance(counter._splitter, re.Pattern) and counter._segments  # the fast path was taken
    # An added token that strips the whitespace beside it changes what the parts are: counted whole.
    folder = shutil.copytree(TOKENIZER, tmp_path / "lstrip")
    config = json.loads((folder / "tokenizer.json").read_text())
    for token in config["added_tokens"]:
        token["lstrip"] = True
    (folder / "tokenizer.json").write_text(json.dumps(config))
    stripping = token_counter(ModelConfig(name=str(folder)))
    assert stripping.count_rendered(rendered) == stripping.count(rendered) and stripping._splitter is None
    assert TokenCounter().count_rendered(["a b\nc"]) == [3]  # whitespace words


def test_a_causal_lm_without_a_chat_template_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError

    bare = shutil.copytree(TOKENIZER, tmp_path / "bare")
    (bare / "chat_template.jinja").unlink()
    src = write_jsonl(tmp_path / "r.jsonl", reviews(12))
    cfg = DataConfig(path=str(src), output_dir=str(tmp_path / "ds"))
    with pytest.raises(TuneforgeError) as err:
        prepare_dataset(cfg, model=ModelConfig(name=str(bare)))
    assert str(err.value) == (
        "model.chat_template: the tokenizer has no chat template, and a causal LM learns every "
        "classification record as a conversation\n  fix: set model.chat_template to a Jinja template or the "
        "name chatml (or model.task to classification or regression, to train a head)"
    )
    assert not (tmp_path / "ds").exists()
    head = prepare_dataset(cfg, model=ModelConfig(name=str(bare), task="classification"))
    assert head.manifest["counts"]["written"] == 12


def test_an_over_long_pair_loses_prompt_tokens_first_and_identical_pairs_are_dropped(tmp_path: Path) -> None:
    def words(tag: str, n: int, i: int) -> str:
        return " ".join(f"{tag}{i}w{k}" for k in range(n))

    rows = [
        {"prompt": words("p", 3, i), "chosen": words("c", 3, i), "rejected": words("r", 3, i)}
        for i in range(12)
    ]
    long_prompt = {"prompt": words("p", 40, 50), "chosen": words("c", 4, 50), "rejected": words("r", 5, 50)}
    long_answer = {"prompt": words("p", 2, 60), "chosen": words("c", 2, 60), "rejected": words("r", 30, 60)}
    same = [
        {"prompt": words("p", 3, 70), "chosen": "fine, thanks", "rejected": "fine, thanks"},
        {"prompt": words("p", 3, 71), "chosen": "fine,  thanks ", "rejected": "fine, thanks"},
    ]
    src = write_jsonl(tmp_path / "pairs.jsonl", [*rows, long_prompt, long_answer, *same])
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "ds"), format="preference", max_tokens=20)
    )
    kept = written(ds.path)
    assert long_prompt in kept  # whole: encoding cuts its prompt (data.truncation), never its answers
    assert long_answer not in kept and not any(r["chosen"].startswith("fine") for r in kept)
    counts = ds.manifest["counts"]
    assert counts["answer_too_long"] == 1 and counts["identical_answers"] == 2 and counts["written"] == 13
    assert counts["truncated"] == 1  # the long-prompt pair, cut when encoded
    assert (
        "2 preference pairs had the same chosen and rejected answer (nothing to prefer) and were dropped"
        in (ds.manifest["warnings"])
    )
    problems = [json.loads(line)["problem"] for line in (ds.path / "rejected.jsonl").read_text().splitlines()]
    assert sorted(problems) == ["answer_too_long", "identical_answers", "identical_answers"]


def test_a_dataset_prepared_for_one_model_is_sized_with_the_lengths_another_model_sees(
    tokenizers: dict[str, ModelConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data.path naming a dataset prepared for another model: the lengths that size the run are measured
    again as this model sees them (equal to preparing for it), in memory, the dataset left as it is."""
    from tuneforge.artifacts import DatasetDir
    from tuneforge.config import RunConfig
    from tuneforge.data import lengths as lengths_module
    from tuneforge.data.lengths import lengths_for_model
    from tuneforge.models.estimate import _dataset_manifest

    src = write_jsonl(tmp_path / "r.jsonl", reviews(60))
    chat = tokenizers["system"].model_copy(update={"max_length": 4096})
    ds = prepare_dataset(
        DataConfig(path=str(src), output_dir=str(tmp_path / "chat"), prompt_template=PROMPT), model=chat
    )
    on_disk = (ds.path / "manifest.json").read_bytes()
    assert lengths_for_model(ds, chat, PROMPT) == ds.manifest  # measured for this model: taken as it is

    head = tokenizers["tiny"].model_copy(update={"task": "classification", "max_length": 4096})
    plain = tokenizers["tiny"].model_copy(update={"max_length": 4096})  # no system prompt
    other_prompt = "Label: {text}"
    for model, template in ((head, PROMPT), (plain, PROMPT), (chat, other_prompt)):
        direct = prepare_dataset(
            DataConfig(path=str(src), output_dir=str(tmp_path / "direct"), prompt_template=template),
            model=model,
            force=True,
        ).manifest["token_lengths"]
        seen = lengths_for_model(ds, model, template)["token_lengths"]
        for split in ("train", "validation", "test"):
            assert seen[split] == direct[split], (model.name, model.task, template, split)
        assert seen["measured_as"] == direct["measured_as"]
        assert seen["train"]["mean"] < ds.manifest["token_lengths"]["train"]["mean"] - 10  # no system prompt
    assert (ds.path / "manifest.json").read_bytes() == on_disk
    # A model whose tokenizer cannot be had here (offline, gated): sized with the lengths as prepared.
    assert lengths_for_model(ds, ModelConfig(name="./not-here"), PROMPT) == ds.manifest

    # Through what `tuneforge estimate`, train's time line and the budget read.
    cfg = RunConfig.model_validate(
        {"model": head.model_dump(), "data": {"path": str(ds.path), "prompt_template": PROMPT}}
    )
    assert (
        _dataset_manifest(cfg)["token_lengths"]["train"]
        == lengths_for_model(ds, head, PROMPT)["token_lengths"]["train"]
    )

    # A large split is measured on a seeded sample; its count and total stand for the whole split.
    monkeypatch.setattr(lengths_module, "SIZING_SAMPLE", 10)
    monkeypatch.setattr(lengths_module, "_REMEASURED", {})
    sampled = lengths_for_model(DatasetDir(ds.path), plain, PROMPT)["token_lengths"]["train"]
    rows = ds.manifest["splits"]["train"]
    assert rows > 10 and sampled["count"] == rows
    assert sampled["total"] == round(sampled["mean"] * rows)


def test_a_large_split_is_sampled_one_line_at_a_time_and_uniformly(tmp_path: Path) -> None:
    """The sizing sample of a split (reservoir sampling, never the whole file in memory) counts every row,
    keeps `size` of them, and picks each row with the same chance: no bias to the file's start."""
    import json

    from tuneforge.data.lengths import sample_jsonl

    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps({"text": f"row {i}", "i": i}) + "\n" + ("\n" if i % 7 == 0 else "") for i in range(200)
        )
    )
    rows, sample = sample_jsonl(path, 20)
    assert rows == 200 and len(sample) == 20 and len({r["i"] for r in sample}) == 20
    assert sample_jsonl(path, 20) == (rows, sample)  # seeded
    assert sample_jsonl(path, 500) == (
        200,
        [json.loads(line) for line in path.read_text().split("\n") if line],
    )
    picked = [0] * 200
    for seed in range(500):
        for r in sample_jsonl(path, 20, seed=seed)[1]:
            picked[r["i"]] += 1
    # each row is picked 500 x 20/200 = 50 times on average (binomial sd ~6.7)
    assert min(picked) > 20 and max(picked) < 85, (min(picked), max(picked))
    first, last = sum(picked[:100]), sum(picked[100:])
    assert abs(first - last) < 0.1 * (first + last)
