"""Every sensible approach × task trains on the tiny models with exact losses; adapters reload exactly.

The expected losses were obtained by running exactly these configs once on CPU (seed 42, torch's default
deterministic CPU kernels) and copying the per-step losses from metrics.jsonl; `pytest.approx(rel=1e-5)`
leaves room only for float summation order differences between CPUs. Most first-step losses repeat across
methods because every adapter starts as the identity (LoRA's B is zero, IA³'s scales are one), so the first
forward pass is the base model's on the tiny Llama (BERT's own dropout draws from the random stream after the
adapter's initialisation did, so its first losses differ by method); prompt and prefix tuning add virtual
tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import LABELS, sentiment_rows, write_csv, write_jsonl
from tuneforge.artifacts import DatasetDir, RunDir
from tuneforge.config import RunConfig, config_from_dict
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation.scores import lm_loss
from tuneforge.models.collate import collate
from tuneforge.models.encode import encode_for_task
from tuneforge.models.runs import load_tuned
from tuneforge.train import train
from tuneforge.train.loop import batch_loss

CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"how is the {thing} number {i}?"},
            {"role": "assistant", "content": mood},
            {"role": "user", "content": "and today?"},
            {"role": "assistant", "content": f"{mood} today"},
        ]
    }
    for i, (thing, mood) in enumerate(
        (t, m) for t in ("car", "phone", "order", "ticket", "road") for m in ("good", "bad", "fine", "great")
    )
]
TEXTS = [
    {"text": f"the quick brown fox number {i} jumps over the lazy dog; {r['text']}"}
    for i, r in enumerate(sentiment_rows(20))
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_data(tmp_path_factory.mktemp("data"))


def make_data(root: Path) -> dict[str, Path]:
    """One small file per record format (prepared once per module, then reused from its dataset folder)."""
    rows = sentiment_rows(30)
    return {
        "classification": write_csv(root / "sentiment.csv", rows),
        "regression": write_jsonl(
            root / "scores.jsonl", [{"text": r["text"], "label": float(i % 5)} for i, r in enumerate(rows)]
        ),
        "chat": write_jsonl(root / "chats.jsonl", CHATS),
        "text": write_jsonl(root / "texts.jsonl", TEXTS),
        # Imbalanced (4 negative, 1 neutral, 1 positive in every 6 rows), so balanced class weights matter.
        "imbalanced": write_csv(
            root / "imbalanced.csv",
            [{**r, "label": LABELS[0] if i % 6 < 4 else LABELS[i % 6 - 3]} for i, r in enumerate(rows)],
        ),
    }


def config(
    data: dict[str, Path],
    tmp_path: Path,
    model: Path,
    task: str,
    fmt: str,
    method: dict[str, Any],
    **train: Any,
) -> RunConfig:
    source = "imbalanced" if train.pop("imbalanced", False) else fmt
    return config_from_dict(
        {
            "data": {
                "path": str(data[source]),
                "format": fmt,
                "output_dir": str(data[source].with_suffix(".ds")),
                "min_examples": 5,
                "prompt_template": "{text} ->",
            },
            "model": {"name": str(model), "task": task, "max_length": 48},
            "method": method,
            "train": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 3,
                "batch_size": 4,
                "learning_rate": 1e-2,
                "warmup_steps": 0,
                "scheduler": "constant",
                "eval_every": 0,
                "save_every": 0,
                "progress": False,
                # The expected losses were recorded on padded batches: a packed row draws other dropout masks.
                # Packing has its own tests (tests/unit/models/test_packing.py).
                "pack_examples": False,
                **train,
            },
        }
    )


def step_losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in run.metrics() if r.get("split") != "validation" and "loss" in r]


SMALL = {"prompt-tuning": {"num_virtual_tokens": 4}, "prefix-tuning": {"num_virtual_tokens": 4}}

# (model fixture, task, data format, method) -> losses of steps 1..3
EXPECTED: dict[tuple[str, str, str, str], list[float]] = {
    ("tiny_llama", "causal-lm", "classification", "full"): [
        5.907071730669807,
        5.446500651041666,
        4.962177501005285,
    ],
    ("tiny_llama", "causal-lm", "classification", "lora"): [
        5.907071730669807,
        5.761930338541666,
        5.691475363338695,
    ],
    ("tiny_llama", "causal-lm", "classification", "dora"): [
        5.907071730669807,
        5.777117919921875,
        5.684806374942555,
    ],
    ("tiny_llama", "causal-lm", "classification", "ia3"): [
        5.907071730669807,
        5.9223688761393225,
        5.902961282169118,
    ],
    ("tiny_llama", "causal-lm", "classification", "prompt-tuning"): [
        5.907567641314338,
        5.923886617024739,
        5.904424779555377,
    ],
    ("tiny_llama", "causal-lm", "classification", "prefix-tuning"): [
        5.924100090475643,
        5.942237854003906,
        5.918054019703584,
    ],
    ("tiny_llama", "causal-lm", "chat", "lora"): [5.923196315765381, 5.797945976257324, 5.751679420471191],
    ("tiny_llama", "causal-lm", "chat", "prompt-tuning"): [
        5.92393684387207,
        5.918301582336426,
        5.9706621170043945,
    ],
    # Every document is packed, also those longer than model.max_length (once dropped by default).
    ("tiny_llama", "causal-lm", "text", "lora"): [5.945076151097075, 5.854433100274268, 5.806576343292885],
    ("tiny_llama", "causal-lm", "text", "full"): [5.945076151097075, 5.6043408982297205, 5.8253173828125],
    ("tiny_llama", "classification", "classification", "full"): [
        1.160712718963623,
        1.0269051790237427,
        0.9777690172195435,
    ],
    ("tiny_llama", "classification", "classification", "lora"): [
        1.160712718963623,
        1.03657066822052,
        0.9790340065956116,
    ],
    ("tiny_llama", "classification", "classification", "dora"): [
        1.160712718963623,
        1.0304172039031982,
        1.0021312236785889,
    ],
    ("tiny_llama", "classification", "classification", "ia3"): [
        1.160712718963623,
        0.9838026165962219,
        1.1037840843200684,
    ],
    ("tiny_bert", "classification", "classification", "full"): [
        1.097298502922058,
        1.1195896863937378,
        1.07052743434906,
    ],
    ("tiny_bert", "classification", "classification", "lora"): [
        1.0946153402328491,
        1.0989021062850952,
        1.0456620454788208,
    ],
    ("tiny_bert", "classification", "classification", "dora"): [
        1.0946153402328491,
        1.0992693901062012,
        1.0526609420776367,
    ],
    ("tiny_bert", "classification", "classification", "ia3"): [
        1.1002848148345947,
        1.0960062742233276,
        1.0890367031097412,
    ],
    ("tiny_bert", "classification", "classification", "prompt-tuning"): [
        1.10262131690979,
        1.1029086112976074,
        1.0858213901519775,
    ],
    ("tiny_llama", "regression", "regression", "full"): [
        3.3838303089141846,
        3.4854512214660645,
        1.8910467624664307,
    ],
    ("tiny_llama", "regression", "regression", "lora"): [
        3.3838303089141846,
        3.6522703170776367,
        2.0752222537994385,
    ],
    ("tiny_llama", "regression", "regression", "dora"): [
        3.3838303089141846,
        3.7617814540863037,
        2.273725748062134,
    ],
    ("tiny_llama", "regression", "regression", "ia3"): [
        3.3838303089141846,
        4.459676265716553,
        4.2918524742126465,
    ],
    ("tiny_bert", "regression", "regression", "full"): [
        3.530677556991577,
        3.92838716506958,
        2.9686930179595947,
    ],
    ("tiny_bert", "regression", "regression", "lora"): [
        3.500699758529663,
        4.271169185638428,
        3.254823923110962,
    ],
    ("tiny_bert", "regression", "regression", "dora"): [
        3.500699758529663,
        4.28026819229126,
        3.450244426727295,
    ],
    ("tiny_bert", "regression", "regression", "ia3"): [
        3.5029330253601074,
        4.47630500793457,
        4.298149108886719,
    ],
    ("tiny_bert", "regression", "regression", "prompt-tuning"): [
        3.4648399353027344,
        4.356567859649658,
        4.15332555770874,
    ],
}


@pytest.mark.parametrize("case", list(EXPECTED), ids=lambda c: "-".join(c))
def test_approach_and_task_train_with_exact_losses(
    case: tuple[str, str, str, str], data: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model, task, fmt, method = case
    cfg = config(
        data, tmp_path, request.getfixturevalue(model), task, fmt, {"name": method, **SMALL.get(method, {})}
    )
    run = train(cfg)
    assert step_losses(run) == pytest.approx(EXPECTED[case], rel=1e-5)
    assert run.manifest["method"] == method


def test_balanced_class_weights_change_the_loss(
    data: dict[str, Path], tmp_path: Path, tiny_bert: Path
) -> None:
    losses = {}
    for weights in ("none", "balanced"):
        cfg = config(
            data,
            tmp_path / weights,
            tiny_bert,
            "classification",
            "classification",
            {"name": "lora"},
            imbalanced=True,
            class_weights=weights,
        )
        losses[weights] = step_losses(train(cfg))
    # Obtained like EXPECTED. Balanced weights count the common class (negative) less and the rare ones more,
    # and the loss stays a mean over rows, so a mostly-negative batch (step 1) weighs less than unweighted.
    assert losses == {
        "none": pytest.approx([1.1047627925872803, 1.0663506984710693, 1.0457873344421387], rel=1e-5),
        "balanced": pytest.approx([0.5260775685310364, 1.0170310735702515, 1.4948701858520508], rel=1e-5),
    }


def validation_examples(tok: Any, cfg: RunConfig, dataset: DatasetDir) -> list[dict[str, Any]]:
    records = dataset.records("validation")[: cfg.train.eval_max_examples]
    examples, _ = encode_for_task(
        records,
        tok,
        task=cfg.model.task,
        fmt=dataset.format,
        labels=dataset.labels,
        max_length=cfg.model.max_length,
        template=cfg.data.prompt_template,
    )
    return examples


def validation_loss(model: Any, tok: Any, cfg: RunConfig, dataset: DatasetDir) -> float:
    """The validation loss as the training loop computes it, for a model loaded from a finished run."""
    examples = validation_examples(tok, cfg, dataset)
    model.eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), cfg.train.batch_size):
            batch = collate(examples[start : start + cfg.train.batch_size], int(tok.pad_token_id))
            loss, _ = batch_loss(model, batch, cfg.model.task)
            total += float(loss)
            targets += (
                int((batch["labels"][:, 1:] != -100).sum()) if "labels" in batch else len(batch["label"])
            )
    return total / targets


RELOAD_CASES = [
    ("tiny_llama", "causal-lm", "classification", "lora"),
    ("tiny_llama", "causal-lm", "classification", "dora"),
    ("tiny_llama", "causal-lm", "classification", "ia3"),
    ("tiny_llama", "causal-lm", "classification", "prompt-tuning"),
    ("tiny_llama", "causal-lm", "classification", "prefix-tuning"),
    ("tiny_llama", "classification", "classification", "lora"),
    ("tiny_llama", "regression", "regression", "ia3"),
    ("tiny_bert", "classification", "classification", "dora"),
    ("tiny_bert", "classification", "classification", "prompt-tuning"),
    ("tiny_bert", "regression", "regression", "lora"),
    ("tiny_bert", "classification", "classification", "full"),
]


@pytest.mark.parametrize("case", RELOAD_CASES, ids=lambda c: "-".join(c))
def test_saved_result_reloads_with_identical_predictions(
    case: tuple[str, str, str, str], data: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model_name, task, fmt, method = case
    base_dir = request.getfixturevalue(model_name)
    cfg = config(data, tmp_path, base_dir, task, fmt, {"name": method, **SMALL.get(method, {})})
    run = train(cfg)
    trained = [r["loss"] for r in run.metrics() if r.get("split") == "validation"]
    assert len(trained) == 1  # validated once, at the end, by the model in memory

    model, tok = load_tuned(run, cfg)  # how `tuneforge evaluate` loads it
    dataset = DatasetDir(Path(run.manifest["dataset"]["path"]))
    assert validation_loss(model, tok, cfg, dataset) == pytest.approx(trained[0], rel=1e-6)
    if task == "causal-lm":
        # `tuneforge evaluate` scores causal LMs with scores.lm_loss: the same number, virtual tokens or not.
        examples = validation_examples(tok, cfg, dataset)
        scored = lm_loss(model, examples, int(tok.pad_token_id), cfg.train.batch_size)
        assert scored["loss"] == pytest.approx(trained[0], rel=1e-5)

    if task != "causal-lm" and method != "full":
        # The head is stored inside the adapter (the identical loss above shows it is the trained one: a head
        # missing from the adapter would be freshly initialised on loading).
        head = "classifier" if model_name == "tiny_bert" else "score"
        saved = load_file(str(run.final / "adapter_model.safetensors"))
        prefix = "base_model" if method == "prompt-tuning" else "base_model.model"
        expected = [f"{prefix}.{head}.weight"] + ([f"{prefix}.{head}.bias"] if head == "classifier" else [])
        assert sorted(k for k in saved if f".{head}." in k) == sorted(expected)


def test_qlora_on_cpu_stops_before_anything_is_written(
    data: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the error on a machine without CUDA")
    cfg = config(data, tmp_path, tiny_llama, "causal-lm", "classification", {"name": "qlora"})
    with pytest.raises(TuneforgeError, match=r"^config key method.name: qlora needs a CUDA GPU"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_unsupported_combination_stops_before_the_run_directory(
    data: dict[str, Path], tmp_path: Path, tiny_llama: Path
) -> None:
    cfg = config(data, tmp_path, tiny_llama, "classification", "classification", {"name": "prompt-tuning"})
    with pytest.raises(
        TuneforgeError, match="prompt-tuning cannot train a classification head on the decoder"
    ):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_the_run_reports_trainable_and_total_parameters(
    data: dict[str, Path], tmp_path: Path, tiny_bert: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = config(data, tmp_path, tiny_bert, "classification", "classification", {"name": "ia3"}, max_steps=1)
    run = train(cfg)
    # IA³ on the tiny BERT scales, per layer, the key and value outputs (32 + 32), the attention output
    # dense's output (32) and the feed-forward output dense's input (64); plus the trainable copy of the
    # 3-class head (32 x 3 + 3) that PEFT keeps beside the frozen original. 38,851: the base with its head.
    trainable = 2 * (32 + 32 + 32 + 64) + (32 * 3 + 3)
    total = 38_851 + trainable
    assert run.manifest["parameters"] == {"trainable": trainable, "total": total}
    assert f"trainable parameters: {trainable:,} of {total:,} (1.07%)" in capfd.readouterr().err
