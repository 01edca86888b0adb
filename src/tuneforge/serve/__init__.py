"""Serve: run → OpenAI-compatible endpoint (engine, HTTP app, keys, limits, request log, export)."""
