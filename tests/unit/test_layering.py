"""A stage imports only earlier stages and the shared top-level modules (DESIGN.md: no backward imports)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "tuneforge"
STAGES = ["data", "models", "train", "evaluation", "export", "serve", "monitor", "retrain"]
SHARED = {"config", "artifacts", "errors", "builtin", "registry", "registry_mlflow", "__init__"}


def imported_tuneforge_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuneforge")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneforge"):
            found.add(node.module)
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def backward_imports() -> list[str]:
    bad = []
    for i, stage in enumerate(STAGES):
        folder = SRC / stage
        if not folder.is_dir():
            continue
        later = set(STAGES[i + 1 :])
        for path in folder.rglob("*.py"):
            for mod in imported_tuneforge_modules(path):
                target = stage_of(mod)
                if target in later or target in ("cli", "quickstart", "ui"):
                    bad.append(f"{path.relative_to(SRC)} imports {mod}")
    for name in SHARED:
        path = SRC / f"{name}.py"
        if path.is_file():
            for mod in imported_tuneforge_modules(path):
                if stage_of(mod) in STAGES or stage_of(mod) in ("cli", "quickstart"):
                    bad.append(f"{name}.py imports {mod}")
    return bad


def test_no_stage_imports_a_later_stage() -> None:
    assert backward_imports() == []


def test_the_checker_catches_a_backward_import(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "tuneforge"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "x.py").write_text("from tuneforge.train import train\n")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert backward_imports() == ["data/x.py imports tuneforge.train"]
