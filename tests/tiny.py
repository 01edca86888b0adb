"""Tiny random-initialised models and small datasets for offline, CPU-fast tests."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
TOKENIZER = ASSETS / "tiny-tokenizer"
LABELS = ("negative", "neutral", "positive")
WORDS = {
    "negative": ["terrible", "awful", "bad", "broken", "cold", "refund"],
    "neutral": ["car", "road", "phone", "today", "order", "ticket"],
    "positive": ["great", "love", "good", "fine", "quick", "happy"],
}


def make_llama(out: Path, seed: int = 0, hidden: int = 32, tokenizer: Path = TOKENIZER) -> Path:
    """A 2-layer Llama (hidden 32: 4 heads of 8) with the tiny tokenizer, saved as a safetensors folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_bert(out: Path, seed: int = 0) -> Path:
    """A 2-layer BERT encoder (hidden 32) with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
    )
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def sentiment_rows(n: int = 90, seed: int = 0) -> list[dict[str, str]]:
    """Short texts whose label is given away by a keyword, so a tiny model can learn something."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(WORDS[label], 2) + rng.sample(WORDS["neutral"], 1)
        rows.append({"text": f"{words[0]} {words[1]} {words[2]} number {i}", "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
