from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.ui.workspaces import real_chat_run, real_classification_run


@pytest.fixture(scope="session")
def real_workspace_template(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("ui-real") / "ws"
    root.mkdir()
    real_chat_run(root, tiny_llama)
    return root


@pytest.fixture
def real_workspace(real_workspace_template: Path, tmp_path: Path) -> Path:
    """A private copy: tests rate and import into it."""
    return Path(shutil.copytree(real_workspace_template, tmp_path / "ws"))


@pytest.fixture(scope="session")
def classifier_template(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("ui-classifier") / "ws"
    root.mkdir()
    real_classification_run(root, tiny_bert)
    return root


@pytest.fixture
def classifier_ws(classifier_template: Path, tmp_path: Path) -> Path:
    """ws/runs/sentiment: a finished classification run (tiny BERT, labels negative/neutral/positive)."""
    return Path(shutil.copytree(classifier_template, tmp_path / "ws"))


@pytest.fixture(scope="session")
def monitored_template(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """ws/run with one judged window: traffic on another topic, so the embedding drift alert fires."""
    from tests.unit.monitor.deployment import make_run, sports_text, write_log
    from tuneforge.config import load_config
    from tuneforge.monitor import monitor, resolve_window

    ws = tmp_path_factory.mktemp("ui-monitor") / "ws"
    ws.mkdir()
    run = make_run(ws, tiny_bert)
    rng = random.Random(7)
    texts = [sports_text(rng) for _ in range(150)]
    write_log(ws / "log.sqlite", texts, [rng.choice("abc") for _ in texts])
    cfg = load_config(run / "config.yaml")[0].monitor
    monitor(run, str(ws / "log.sqlite"), resolve_window("2026-12-01", None, "1d"), cfg)
    return ws


@pytest.fixture
def monitored(monitored_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(monitored_template, tmp_path / "ws"))


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the browser tests save screenshots: $TUNEFORGE_UI_SCREENSHOTS, else a temporary folder."""
    folder = Path(os.environ.get("TUNEFORGE_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    from tests.unit.ui.browsing import CHROMIUM

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
