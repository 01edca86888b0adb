"""Every shipped YAML run config loads, and the quickstart config file matches the quickstart command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneforge.config import config_from_dict, load_config
from tuneforge.quickstart import QUICKSTART

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml"))


def test_there_are_shipped_configs() -> None:
    assert len(RUN_CONFIGS) >= 2


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    cfg, _ = load_config(path)
    if cfg.method.name:
        from tuneforge.models import resolve_method

        resolve_method(cfg.method)


def test_quickstart_yaml_is_the_quickstart() -> None:
    from_file = config_from_dict(yaml.safe_load((CONFIGS / "quickstart.yaml").read_text()))
    assert from_file == config_from_dict(QUICKSTART)
