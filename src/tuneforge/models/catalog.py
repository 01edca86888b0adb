"""The offline model catalog (catalog.json, shipped in the package): common open models and their numbers.

Answers "which model?" before anything is downloaded: size, architecture, licence, languages. The numbers are
those of each model's config.json; `to_config()` turns an entry back into a transformers config so a model
that is not on disk can still be sized on the meta device (see models/estimate.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class CatalogModel:
    name: str
    hub_id: str
    family: str
    kind: str
    """decoder (causal-lm, or a head on its last token) or encoder (heads only)."""
    arch: str
    """The transformers config that rebuilds it: llama, qwen2, qwen3, gemma2, gemma3, bert, deberta-v2, ..."""
    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    context: int
    tied_embeddings: bool
    license: str
    commercial: bool
    """Whether the licence allows commercial use (some with conditions: read the licence)."""
    languages: list[str]
    chat_template: bool
    strengths: str
    builtin: str | None = None
    model_type: str | None = None
    positions: int | None = None
    type_vocab: int | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.kind == "encoder":
            return ("classification", "regression")
        return ("causal-lm", "classification", "regression")


@cache
def catalog() -> tuple[CatalogModel, ...]:
    """Every catalog entry, in catalog order."""
    text = resources.files("tuneforge.models").joinpath("catalog.json").read_text(encoding="utf-8")
    return tuple(CatalogModel(**entry) for entry in json.loads(text)["models"])


def find(name: str) -> CatalogModel | None:
    """The entry for a catalog name, hub id or built-in name (case-insensitive), if there is one."""
    key = name.lower()
    for m in catalog():
        if key in (m.name.lower(), m.hub_id.lower()) or (m.builtin and key == m.builtin):
            return m
    return None


def select(
    *,
    max_params: float | None = None,
    commercial: bool = False,
    license: str | None = None,
    task: str | None = None,
) -> list[CatalogModel]:
    """Catalog entries that pass every given filter (max_params in parameters, e.g. 8e9)."""
    out = []
    for m in catalog():
        if max_params is not None and m.params > max_params:
            continue
        if commercial and not m.commercial:
            continue
        if license is not None and m.license.lower() != license.lower():
            continue
        if task is not None and task not in m.tasks:
            continue
        out.append(m)
    return out


def parse_count(text: str) -> float:
    """'8B', '500M', '1.5e9' → a parameter count."""
    t = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(t[-1:], 1.0)
    return float(t[:-1] if scale != 1.0 else t) * scale


def to_config(m: CatalogModel) -> Any:
    """A transformers config with the entry's architecture numbers (for sizing on the meta device)."""
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": m.vocab, "hidden_size": m.hidden, "num_hidden_layers": m.layers}
    common |= {"intermediate_size": m.intermediate, "num_attention_heads": m.heads}
    if m.kind == "encoder":
        if m.arch == "modernbert":
            return tf.ModernBertConfig(**common, max_position_embeddings=m.context)
        cls = tf.DebertaV2Config if m.arch == "deberta-v2" else tf.BertConfig
        extra: dict[str, Any] = {}
        if m.arch == "deberta-v2":
            extra = {"position_biased_input": False, "relative_attention": True, "position_buckets": 256}
            extra |= {"type_vocab_size": 0, "pos_att_type": ["p2c", "c2p"], "norm_rel_ebd": "layer_norm"}
            extra |= {"share_att_key": True}
        else:
            extra = {"type_vocab_size": m.type_vocab or 2}
        return cls(**common, max_position_embeddings=m.positions or m.context, **extra)
    classes = {
        "llama": tf.LlamaConfig,
        "qwen2": tf.Qwen2Config,
        "qwen3": tf.Qwen3Config,
        "gemma2": tf.Gemma2Config,
        "gemma3": tf.Gemma3TextConfig,
    }
    return classes[m.arch](
        **common,
        num_key_value_heads=m.kv_heads,
        head_dim=m.head_dim,
        max_position_embeddings=m.context,
        tie_word_embeddings=m.tied_embeddings,
    )


def describe(m: CatalogModel) -> list[str]:
    """One table row: name, hub id, size, kind, context, licence, languages, strengths."""
    lic = m.license + ("" if m.commercial else " (non-commercial)")
    langs = ", ".join(m.languages)
    return [
        m.builtin or m.name,
        m.hub_id,
        human_count(m.params),
        m.kind,
        f"{m.context:,}",
        lic,
        langs,
        m.strengths,
    ]


def human_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


__all__ = ["CatalogModel", "catalog", "describe", "find", "parse_count", "select", "to_config"]
