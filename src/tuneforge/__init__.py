"""tuneforge: from raw data to a fine-tuned, evaluated, served and monitored language model."""

__version__ = "0.1.0"
