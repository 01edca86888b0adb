"""What commands print, read at the width of a small terminal (80 columns)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tuneforge import builtin, cli


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(width=80, file=out, color_system=None))
    return out


def test_models_shows_whole_names_and_install_commands(screen: io.StringIO) -> None:
    cli.models()
    text = screen.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for m in builtin.MODELS.values():
        assert f"│ builtin:{m.name} " in text  # on one line, not cut or folded
        assert f"install builtin:{m.name}: {m.pip}\n" in text


def test_config_keys_lists_every_method_option_with_its_docstring(capsys: pytest.CaptureFixture[str]) -> None:
    from tuneforge.models.methods import METHODS

    cli.config_keys()  # stdout is not a terminal here: one line per key
    lines = capsys.readouterr().out.splitlines()
    assert "method.r (lora, qlora, dora)  (int, default 16)  Rank of the low-rank update." in lines
    assert (
        "method.num_virtual_tokens (prefix-tuning)  (int, default 20)  Learned key/value positions per layer."
        in lines
    )
    keys = [line.split("  ")[0] for line in lines]
    assert keys.index("method.name") + 1 == keys.index("method.r (lora, qlora, dora)")
    for method, module in METHODS.items():
        for name, field in module.Options.model_fields.items():
            assert field.description, f"{method}.{name} has no docstring"
            assert any(k.startswith(f"method.{name} (") and method in k for k in keys), (method, name)


def test_config_keys_lists_the_keys_of_an_optional_section_and_dpo_beta(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli.config_keys()
    lines = capsys.readouterr().out.splitlines()
    assert (
        "eval.judge  (section | None, default null)  LLM-as-judge over generated answers (off unless set)."
        in lines
    )
    assert "eval.judge.model  (str, default required)  Model name to send to the judge endpoint." in lines
    assert (
        "eval.judge.timeout_s  (float, default 60.0)  Seconds one judge request may take in all (connecting, "
        "waiting and reading the whole answer)." in lines
    )
    assert (
        "eval.judge.max_tokens  (int, default 256)  The longest judge answer to ask for "
        "(sent as max_tokens: a brief reason and the verdict)." in lines
    )
    assert (
        "train.dpo_beta  (float, default 0.1)  Preference data (DPO): how far the tuned model may move "
        "from the base; higher keeps it closer." in lines
    )
