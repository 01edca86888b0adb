"""① Data: raw sources → a validated, cleaned, deduplicated, split dataset directory."""

from tuneforge.data.prepare import prepare_dataset

__all__ = ["prepare_dataset"]
