from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.ui.workspaces import real_chat_run


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
