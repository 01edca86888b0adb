"""A model's size without its weights: built on the meta device from config.json (or a catalog entry).

Parameter counts (total, trainable under the method, in linear layers) are exact: the very model tuneforge
would train is built, with its head and adapter, on the meta device, so nothing is read or allocated. The
activations one training step keeps for backward are counted the same way: a forward pass on meta tensors
under `saved_tensors_hooks` sees every tensor autograd saves, with its shape and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge import builtin
from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.errors import TuneforgeError
from tuneforge.models.catalog import find, to_config

HEAD_NAMES = ("lm_head", "score", "classifier")


@dataclass
class ModelShape:
    """What the memory and time estimate needs to know about a model under a method."""

    name: str
    kind: str
    """decoder or encoder."""
    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab: int
    total: int
    trainable: int
    linear: int
    """Parameters in linear layers of the blocks (what 4-bit quantization applies to)."""
    embedding: int
    """Parameters of the input embedding (no multiplications: left out of FLOPs)."""
    model: Any = None
    """The meta-device model (for counting activations)."""
    source: str = "config"


def load_config(cfg: ModelConfig) -> tuple[Any, str]:
    """The transformers config of `cfg.name` (folder, built-in, catalog, hub config.json), and whence."""
    from transformers import AutoConfig

    if builtin.is_builtin(cfg.name):
        return AutoConfig.from_pretrained(builtin.resolve(cfg.name)), "config.json"
    path = Path(cfg.name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TuneforgeError(f"{path} has no config.json", where="model.name")
        return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code), "config.json"
    entry = find(cfg.name)
    if entry is not None:
        return to_config(entry), "catalog"
    try:  # only config.json is fetched (or read from the local hub cache): a few kilobytes, no weights
        config = AutoConfig.from_pretrained(
            cfg.name, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise TuneforgeError(
            f"cannot size {cfg.name!r}: it is not in the catalog and its config.json could not be read "
            f"({type(err).__name__})",
            where="model.name",
            fix="pass a local model folder, a catalog name (`tuneforge models --all`), or go online once",
        ) from None
    return config, "hub config.json"


_BUILT: dict[str, ModelShape] = {}  # meta models are weightless: keep the last few for repeated estimates


def build_meta(cfg: ModelConfig, method: MethodConfig, *, labels: int = 2, dtype: Any = None) -> ModelShape:
    """The model tuneforge would train (head and adapter included), on the meta device."""
    key = f"{cfg.model_dump_json()}|{method.model_dump_json()}|{labels}|{dtype}"
    if key not in _BUILT:
        if len(_BUILT) >= 8:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = _build_meta(cfg, method, labels=labels, dtype=dtype)
    return _BUILT[key]


def _build_meta(cfg: ModelConfig, method: MethodConfig, *, labels: int, dtype: Any) -> ModelShape:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tuneforge.models.loading import _quiet_transformers
    from tuneforge.models.methods import count_parameters, lora, resolve_method

    _quiet_transformers()  # the same silence as a real load: no deprecation chatter before our own output
    config, source = load_config(cfg)
    module, options = resolve_method(method)
    if method.name == "qlora":
        module = lora  # the same adapters; the 4-bit base is accounted for in bytes, not in the meta model
    # torch's meta device, not accelerate's init_empty_weights: under the latter transformers 5 does not tie
    # input and output embeddings, which would double-count them.
    with torch.device("meta"):
        if cfg.task == "causal-lm":
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            num = labels if cfg.task == "classification" else 1
            config.num_labels = num
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = 0  # decoder heads look for padding to find each row's last token
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
        base_linear = sum(
            m.weight.numel()
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] not in HEAD_NAMES
        )
        emb = model.get_input_embeddings()
        embedding = sum(p.numel() for p in emb.parameters()) if emb is not None else 0
        model = module.apply(model, options, cfg.task)
    trainable, total = count_parameters(model)
    text = getattr(config, "text_config", None) or config
    heads = int(text.num_attention_heads)
    return ModelShape(
        name=cfg.name,
        kind="decoder" if cfg.task == "causal-lm" or not is_encoder(text) else "encoder",
        layers=int(text.num_hidden_layers),
        hidden=int(text.hidden_size),
        heads=heads,
        head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        vocab=int(text.vocab_size),
        total=total,
        trainable=trainable,
        linear=base_linear,
        embedding=embedding,
        model=model,
        source=source,
    )


def is_encoder(config: Any) -> bool:
    """Bidirectional models are those with a masked-LM head (BERT also has a causal head class, unused)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _blocks(model: Any, layers: int) -> list[Any]:
    """The transformer blocks: the ModuleList holding one module per layer."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == layers:
            return list(m)
    return []


def saved_activation_bytes(shape: ModelShape, batch: int, length: int) -> tuple[int, int]:
    """Bytes autograd saves for backward in one forward of (batch, length): (inside blocks, outside blocks).

    Counted on the meta device; tensors that are views of one another are counted once, parameters not at all.
    Raises whatever the model's forward raises on meta tensors (some architectures need real values).
    """
    import torch

    model = shape.model
    model.train()
    seen: set[int] = set()
    inside = [0, 0]  # bytes inside a block, outside
    depth = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if isinstance(base, torch.nn.Parameter) or id(base) in seen:
            return t
        seen.add(id(base))
        keep.append(base)  # keeps ids unique while counting
        inside[0 if depth[0] else 1] += base.numel() * base.element_size()
        return t

    keep: list[torch.Tensor] = []
    handles = []
    for block in _blocks(model, shape.layers):
        handles.append(block.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1)))
        handles.append(block.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1)))
    ids = torch.zeros((batch, length), dtype=torch.long, device="meta")
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fused_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *a: Any, **kw: Any
    ) -> torch.Tensor:
        # On meta tensors torch picks SDPA's math kernel, which keeps the (T, T) scores; on CPUs and GPUs the
        # fused kernels keep only q, k, v, the output and a float32 log-sum-exp per query.
        for t in (q, k, v):
            pack(t)
        out = q.narrow(-1, 0, v.shape[-1]) * 1.0  # (B, heads, T, dv): a result that still requires grad
        inside[0 if depth[0] else 1] += out.numel() * out.element_size() + out[..., 0].numel() * 4
        return out

    fused = getattr(model.config, "_attn_implementation", None) == "sdpa"
    try:
        if fused:
            torch.nn.functional.scaled_dot_product_attention = fused_attention  # type: ignore[assignment]
        # No attention mask: with one, transformers inspects its values (impossible on meta); a full mask is
        # what packed and equal-length batches have anyway.
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    return inside[0], inside[1]
