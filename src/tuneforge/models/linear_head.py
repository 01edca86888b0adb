"""A head run's model: the frozen base + a linear head over its pooled embeddings (`method.name: head`).

The head is stored as `final/head.safetensors` (tensors `coef` (K, D), `intercept` (K,), `classes` (K,): the
label index of each row; metadata: labels, pooling and windowing), never as a pickle, and the base model is
referenced by the run's manifest, never copied. `HeadModel.text_logits` is what evaluation and serving call,
so both read a text through the same windows and pooling as training did.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from tuneforge.artifacts import write_bytes_atomic
from tuneforge.errors import TuneforgeError
from tuneforge.models.features import POOLING, pooled_embeddings

HEAD_FILE = "head.safetensors"
FORMAT = "tuneforge.head/1"


def save_head(
    folder: Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    classes: list[int],
    *,
    task: str,
    labels: list[str],
    max_length: int,
    stride: int,
) -> Path:
    """Write the head's tensors (float32) and how its inputs were pooled, atomically."""
    from safetensors.numpy import save

    meta = {
        "format": FORMAT,
        "task": task,
        "labels": json.dumps(labels),
        "pooling": POOLING,
        "max_length": str(max_length),
        "stride": str(stride),
    }
    data = save(
        {
            "coef": np.ascontiguousarray(coef, dtype=np.float32),
            "intercept": np.ascontiguousarray(intercept, dtype=np.float32),
            "classes": np.asarray(classes, dtype=np.int64),
        },
        metadata=meta,
    )
    path = folder / HEAD_FILE
    write_bytes_atomic(path, data)
    return path


def read_head(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The head's tensors and metadata; a damaged or foreign file is one clear error."""
    from safetensors import SafetensorError, safe_open

    path = folder / HEAD_FILE
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    except (SafetensorError, OSError) as err:
        raise TuneforgeError(
            f"the run's head {path} is missing or damaged ({err})",
            where=str(path),
            fix="copy the run again, or train it again",
        ) from None
    if meta.get("format") != FORMAT or not {"coef", "intercept", "classes"} <= set(tensors):
        raise TuneforgeError(
            f"{path} is not a tuneforge head (format {meta.get('format')!r})",
            where=str(path),
            fix="train the run again with this tuneforge version",
        )
    return tensors, meta


def load_backbone(model_cfg: Any, path: str) -> Any:
    """The base model without any task head (its last hidden states are the features), frozen, eval mode."""
    from transformers import AutoModel

    from tuneforge.models.integrity import check_weights
    from tuneforge.models.loading import _from_pretrained, pick_dtype

    if Path(path).is_dir():
        check_weights(Path(path))
    kwargs = {"dtype": pick_dtype(model_cfg), "use_safetensors": None if model_cfg.allow_pickle else True}
    model = _from_pretrained(AutoModel, path, model_cfg, **kwargs)
    model.requires_grad_(False)
    return model.eval()


class HeadModel:
    """Frozen base + linear head; `text_logits` reads whole texts (chunked), `__call__` one window per row."""

    def __init__(
        self,
        backbone: Any,
        tok: Any,
        tensors: dict[str, np.ndarray],
        meta: dict[str, str],
        batch_size: int = 16,
    ) -> None:
        self.backbone, self.tok, self.batch_size = backbone, tok, batch_size
        self.tensors, self.meta = tensors, meta
        self.coef = tensors["coef"].astype(np.float32)  # (K, D)
        self.intercept = tensors["intercept"].astype(np.float32)  # (K,)
        self.labels: list[str] = json.loads(meta.get("labels", "[]"))
        self.max_length, self.stride = int(meta["max_length"]), int(meta["stride"])
        self.config = backbone.config  # what servers read (context length)

    @property
    def device(self) -> Any:
        return next(self.backbone.parameters()).device

    def parameters(self) -> Any:
        return self.backbone.parameters()

    def eval(self) -> HeadModel:
        self.backbone.eval()
        return self

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """A self-contained copy (what export writes): the base model's folder plus head.safetensors."""
        from safetensors.numpy import save

        self.backbone.save_pretrained(folder, **kwargs)
        write_bytes_atomic(Path(folder) / HEAD_FILE, save(self.tensors, metadata=self.meta))

    def logits_of(self, vectors: np.ndarray) -> np.ndarray:
        return vectors @ self.coef.T + self.intercept  # (N, D) @ (D, K) -> (N, K)

    def text_logits(self, texts: list[str], batch_size: int | None = None) -> list[list[float]]:
        """(N, K) logits of whole texts, each read through all its windows, as training read it."""
        if not texts:
            return []
        pooled = pooled_embeddings(
            self.backbone,
            self.tok,
            texts,
            max_length=self.max_length,
            stride=self.stride,
            batch_size=batch_size or self.batch_size,
        )
        return self.logits_of(pooled.vectors).astype(float).tolist()  # type: ignore[no-any-return]

    def __call__(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
        """Logits of rows already cut to one window each (for callers that encode themselves)."""
        import torch

        with torch.inference_mode():
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
            pooled = ((hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()  # (B, D)
        return SimpleNamespace(logits=torch.from_numpy(self.logits_of(pooled)))


def load_head_model(folder: Path, model_cfg: Any, base_path: str, tok: Any) -> HeadModel:
    """A head run's model from its final/ folder and its base model (found through the run's manifest)."""
    tensors, meta = read_head(folder)
    return HeadModel(load_backbone(model_cfg, base_path), tok, tensors, meta)
