"""Export: a finished run → a plain Hugging Face folder (adapter merged) or a GGUF file, for other runtimes.

Merging and conversion are not serving: `tuneforge serve` loads runs as they are; this stage writes them out.
"""
