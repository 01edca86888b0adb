"""The run report links to the run's monitor reports, each format to the same format, newest window first."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.artifacts import RunDir
from tuneforge.evaluation.report import monitor_section
from tuneforge.evaluation.report.render import to_html, to_markdown


def test_the_run_report_links_each_monitor_window_relatively(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert monitor_section(run) is None  # never monitored: no section
    windows = {
        "2026-12-01T0000Z_2026-12-02T0000Z": {"enough_data": True, "alerts": [{}, {}]},
        "2026-12-02T0000Z_2026-12-03T0000Z": {"enough_data": False, "alerts": []},
    }
    for name, body in windows.items():
        (run.path / "monitor" / name).mkdir(parents=True)
        (run.path / "monitor" / name / "report.json").write_text(json.dumps(body))
    section = monitor_section(run)
    assert section is not None and section[0] == "Monitoring"
    md = to_markdown("t", [section])
    new, old = "2026-12-02T0000Z_2026-12-03T0000Z", "2026-12-01T0000Z_2026-12-02T0000Z"
    assert md.splitlines()[-2:] == [
        f"- [{new}: not enough data](<monitor/{new}/report.md>)",
        f"- [{old}: 2 alert(s)](<monitor/{old}/report.md>)",
    ]
    html = to_html("t", [section])
    assert (
        "<li><a href='monitor/2026-12-01T0000Z_2026-12-02T0000Z/report.html'>"
        "2026-12-01T0000Z_2026-12-02T0000Z: 2 alert(s)</a></li>" in html
    )
