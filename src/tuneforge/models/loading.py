"""Load a base model and its tokenizer from a folder, the hub or a built-in; safetensors only by default."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge import builtin
from tuneforge.config import MethodConfig, ModelConfig
from tuneforge.data.chat import template_of  # shared with the data stage, which measures what we render
from tuneforge.errors import TuneforgeError
from tuneforge.models.integrity import check_code, check_tokenizer, check_weights

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists()


def resolve_model_path(cfg: ModelConfig, *, weights: bool = True) -> str:
    """A local folder path for local and built-in models, the hub id otherwise.

    `weights=False`: only the tokenizer is needed, which a built-in converts alone on first use.
    """
    if builtin.is_builtin(cfg.name):
        return str(builtin.resolve(cfg.name, weights=weights))
    if _looks_like_path(cfg.name):
        path = Path(cfg.name).expanduser()
        if not path.is_dir():
            raise TuneforgeError(
                f"model folder {path} does not exist",
                where="model.name",
                fix="pass a Hugging Face model folder",
            )
        _refuse_not_a_model(path, weights=weights)
        _refuse_pickle(path, cfg)
        return str(path)
    return cfg.name


def _refuse_not_a_model(path: Path, *, weights: bool) -> None:
    """A folder without config.json (a run, its final/ adapter, anything else) is one clear error.

    Only the tokenizer (`weights=False`) may come from a folder that holds a tokenizer and nothing else.
    """
    from tuneforge.artifacts import RunDir
    from tuneforge.models.integrity import TOKENIZER_FILES
    from tuneforge.models.lineage import not_a_model

    if (path / "config.json").is_file():
        return
    if RunDir.is_run(path):
        raise TuneforgeError(
            f"{path} is a tuneforge run, not a model folder",
            where="model.name",
            fix="`tuneforge train` starts from a run (model.name or train.init_from in its config: DPO "
            "continues what the run trained); elsewhere serve or export the run itself",
        )
    if weights or not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise not_a_model(path, "model.name")


def _refuse_pickle(path: Path, cfg: ModelConfig) -> None:
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files) or cfg.allow_pickle:
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise TuneforgeError(
            f"{path} holds only pickle weights ({', '.join(sorted(pickles))}); "
            "loading a pickle can run arbitrary code",
            where="model.name",
            fix="convert the weights to safetensors, or set model.allow_pickle=true if you trust the file",
        )


def _hub_error(cfg: ModelConfig, err: Exception) -> TuneforgeError:
    return TuneforgeError(
        f"could not load {cfg.name!r} from the Hugging Face hub ({type(err).__name__}: {str(err)[:200]})",
        where="model.name",
        fix="check the id and your network; offline, download the model once and pass its local folder "
        "(or use builtin:smollm2-135m-instruct / builtin:minilm-l6)",
    )


def _quiet_transformers() -> None:
    # Per-tensor loading bars and deprecation chatter drown our own progress output.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    builtin.skip_unused_deepspeed()
    # Raised from inside transformers/peft on every forward with gradient checkpointing, about an API we never
    # call ourselves; nothing a user could act on.
    for deprecated in ("is_gradient_checkpointing", "past_key_values"):
        warnings.filterwarnings("ignore", message=f"`{deprecated}` is deprecated", category=FutureWarning)


def _from_pretrained(loader: Any, path: str, cfg: ModelConfig, **kwargs: Any) -> Any:
    from safetensors import SafetensorError

    _quiet_transformers()
    local = Path(path).is_dir()
    if local:
        check_code(Path(path), cfg)
    try:
        return loader.from_pretrained(
            path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            local_files_only=local,
            **kwargs,
        )
    except OSError as err:
        if local:
            raise TuneforgeError(f"could not load a model from {path}: {err}", where="model.name") from None
        raise _hub_error(cfg, err) from None
    except SafetensorError as err:  # a hub download (local folders are checked before loading)
        raise TuneforgeError(
            f"the weights of {cfg.name} are damaged ({err})",
            where="model.name",
            fix="delete the model from the hub cache and download it again",
        ) from None
    except ValueError as err:
        if "safetensors" in str(err) and not cfg.allow_pickle:
            raise TuneforgeError(
                f"{cfg.name} has no safetensors weights and pickle loading is off",
                where="model.name",
                fix="set model.allow_pickle=true if you trust this model",
            ) from None
        if "trust_remote_code" in str(err) or "does not recognize this architecture" in str(err):
            raise TuneforgeError(
                f"{cfg.name} needs model code that transformers does not have: {str(err).splitlines()[0]}",
                where="model.trust_remote_code",
                fix="set model.trust_remote_code=true only if you trust this model's code, or upgrade "
                "transformers",
            ) from None
        raise


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = path or resolve_model_path(cfg, weights=False)
    if Path(path).is_dir():
        check_tokenizer(Path(path))
    tok = _from_pretrained(AutoTokenizer, path, cfg)
    if cfg.chat_template:
        tok.chat_template = template_of(cfg.chat_template)
    if tok.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS (or UNK) for padding is safe.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def pick_dtype(cfg: ModelConfig) -> torch.dtype:
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)  # type: ignore[no-any-return]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_model(
    cfg: ModelConfig,
    *,
    labels: list[str] | None = None,
    path: str | None = None,
    pad_token_id: int | None = None,
    method: MethodConfig | None = None,
    empty: bool = False,
) -> PreTrainedModel:
    """Load the base model with the head its task needs (LM head, or a classification/regression head).

    `method` lets a tuning method change how the base is loaded (QLoRA loads it quantised to 4 bits).
    `empty` builds the same model on the meta device, without reading or allocating its weights (FSDP's other
    processes receive theirs from the main one).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from tuneforge.models.methods import load_kwargs

    path = path or resolve_model_path(cfg)
    # Overrides of config.json (head size, dropout) apart from how the weights load: the empty model is built
    # from the config alone.
    config_kwargs: dict[str, Any] = {}
    if cfg.dropout is not None:
        config_kwargs.update(dropout_kwargs(_from_pretrained(AutoConfig, path, cfg), cfg.dropout))
    if cfg.task == "causal-lm":
        _refuse_encoder_as_lm(path, cfg)
        loader: Any = AutoModelForCausalLM
    else:
        if cfg.task == "classification":
            if not labels:
                raise TuneforgeError("a classification model needs the dataset's labels", where="model.task")
            config_kwargs.update(
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
            )
        else:
            config_kwargs.update(num_labels=1, problem_type="regression")
        loader = AutoModelForSequenceClassification
    if empty:
        model = _empty_model(loader, path, cfg, config_kwargs)
    else:
        kwargs: dict[str, Any] = {
            "dtype": pick_dtype(cfg),
            "use_safetensors": None if cfg.allow_pickle else True,
        }
        if method is not None:
            kwargs.update(load_kwargs(method))
        if Path(path).is_dir():
            check_weights(Path(path))
        model = _from_pretrained(loader, path, cfg, **config_kwargs, **kwargs)
    if cfg.task != "causal-lm" and pad_token_id is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id  # decoders need it to find each row's last real token
    return model  # type: ignore[no-any-return]


def _empty_model(loader: Any, path: str, cfg: ModelConfig, config_kwargs: dict[str, Any]) -> Any:
    """The model's structure on the meta device, built from its config: no weights read or allocated.

    Built with `from_config` under `torch.device("meta")` rather than `from_pretrained(device_map="meta")`:
    the latter goes through whatever loading integrations a transformers release switches on (hub kernels
    refuse the meta device from 5.25 on), while the config alone is stable across releases.
    """
    import torch
    from transformers import AutoConfig

    config = _from_pretrained(AutoConfig, path, cfg, **config_kwargs)
    with torch.device("meta"):
        return loader.from_config(config, dtype=pick_dtype(cfg), trust_remote_code=cfg.trust_remote_code)


def _refuse_encoder_as_lm(path: str, cfg: ModelConfig) -> None:
    """An encoder (bidirectional attention) trained as a causal LM would see each token it must predict."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = _from_pretrained(AutoConfig, path, cfg)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise TuneforgeError(
            f"{cfg.name} is an encoder ({config.model_type}); "
            "it cannot be fine-tuned as a causal language model",
            where="model.task",
            fix="use model.task=classification or regression with this model, or a decoder model "
            "(e.g. builtin:smollm2-135m-instruct) for causal-lm",
        )


# The dropout probabilities a config may carry, by the names architectures use for them. Models read them
# while being built (Llama's attention passes `config.attention_dropout` to the attention function, not to an
# nn.Dropout module), so they must reach the config before construction, as `from_pretrained` overrides.
DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "activation_dropout",
    "attn_pdrop",
    "resid_pdrop",
    "embd_pdrop",
    "summary_first_dropout",
    "seq_classif_dropout",
)


def dropout_kwargs(config: Any, p: float) -> dict[str, float]:
    """`from_pretrained` overrides that set every dropout probability this architecture's config has to p."""
    return {name: p for name in DROPOUT_KEYS if isinstance(getattr(config, name, None), int | float)}


def load_adapter(base: Any, folder: Path) -> Any:
    """A run's PEFT adapter on top of its base model; a damaged adapter file is one clear error."""
    from peft import PeftModel

    check_weights(
        folder,
        what=f"the run's adapter ({folder})",
        fix="the file was cut short or changed after training: copy the run again, or train it again",
    )
    return PeftModel.from_pretrained(base, str(folder))


def portable_base(cfg: ModelConfig) -> str:
    """The base model as another machine can find it: a built-in's hub id (its converted folder is in this
    machine's cache), a local folder's absolute path, or the hub id as given."""
    if builtin.is_builtin(cfg.name):
        return builtin.model_info(cfg.name).hub_id
    if _looks_like_path(cfg.name):
        return str(Path(cfg.name).expanduser().resolve())
    return cfg.name


def portable_adapter_config(folder: Path, cfg: ModelConfig) -> None:
    """After a PEFT save: put the portable base (`portable_base`) in adapter_config.json and the model card.

    PEFT writes the path the base was loaded from, which for a built-in is this machine's cache; tuneforge
    itself finds the base through the run's manifest (`run_base_path`), so this is for other tools.
    """
    import json

    file = folder / "adapter_config.json"
    if not file.is_file():  # full fine-tuning saves a whole model, no adapter
        return
    config = json.loads(file.read_text(encoding="utf-8"))
    local, portable = config.get("base_model_name_or_path"), portable_base(cfg)
    config["base_model_name_or_path"] = portable
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = folder / "README.md"
    if local and card.is_file():  # its front matter names the base for the hub's model pages
        text = card.read_text(encoding="utf-8")
        text = text.replace(f"base_model: {local}\n", f"base_model: {portable}\n")
        text = text.replace(f"base_model:adapter:{local}\n", f"base_model:adapter:{portable}\n")
        card.write_text(text, encoding="utf-8")


def run_base_path(manifest: dict[str, Any]) -> str:
    """The base model of a run on this machine: a built-in resolves here, not at the trainer's cache path."""
    name = str(manifest.get("base_model") or "")
    if builtin.is_builtin(name):
        return str(builtin.resolve(name))
    return str(manifest["base_model_path"])
