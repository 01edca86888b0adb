"""② Models: a base model (folder, hub id or built-in) + a tuning method → a trainable model."""

from tuneforge.models.loading import load_model, load_tokenizer, resolve_model_path
from tuneforge.models.methods import apply_method, resolve_method

__all__ = ["apply_method", "load_model", "load_tokenizer", "resolve_method", "resolve_model_path"]
