"""`tuneforge monitor --check` via the real command: exit 1, one line per alert; a small window exits 0."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tests.unit.monitor.deployment import make_run, sports_text, write_log


def test_check_exits_1_on_an_alert_and_0_on_a_window_too_small(cli, tmp_path: Path, tiny_bert: Path) -> None:
    run = make_run(tmp_path, tiny_bert)
    rng = random.Random(0)
    texts = [sports_text(rng) for _ in range(150)]
    write_log(tmp_path / "shift.sqlite", texts, ["a"] * 130 + ["b"] * 20)
    write_log(tmp_path / "small.sqlite", texts[:12], ["a"] * 12)

    r = cli("monitor", str(run), "--log", "shift.sqlite", "--since", "2026-12-01", "--check")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [
        "ALERT prompt embeddings drifted [embedding_drift]",
        "ALERT predicted label mix drifted [label_drift]",
    ]
    assert lines[1].startswith("ALERT predicted label mix drifted [label_drift]: chi-squared: chi2 ")
    assert lines[-1] == f"report: {run / 'monitor' / '2026-12-01T0000Z_2026-12-02T0000Z' / 'report.html'}"

    r = cli(
        "monitor", str(run), "--log", "small.sqlite", "--since", "2026-12-01", "--until", "2026-12-01T12:00",
        "--check", "--set", "monitor.min_samples=20",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        "not enough data (n = 12, need ≥ 20): nothing judged in 2026-12-01T0000Z_2026-12-01T1200Z"
    )

    copy = shutil.copytree(tmp_path / "dataset", tmp_path / "elsewhere")  # --set data.path: where it is now
    r = cli(
        "monitor", str(run), "--log", "small.sqlite", "--since", "2026-12-01", "--set", f"data.path={copy}"
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "monitor" / "2026-12-01T0000Z_2026-12-02T0000Z" / "report.json").read_text())
    assert report["reference"]["dataset"] == str(copy)

    r = cli("monitor", str(run), "--log", "small.sqlite", "--set", "serve.port=1")
    assert r.returncode != 0 and "serve.port=1 is not a monitor option" in r.stderr
