"""`tuneforge prepare CONFIG` end to end (the real CLI in a subprocess) from every source kind."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import TOKENIZER, sentiment_rows, write_csv, write_jsonl

ROWS = sentiment_rows(12)
TEXTS = [{"text": r["text"]} for r in ROWS]


def _jsonl(d: Path) -> str:
    return str(write_jsonl(d / "data.jsonl", ROWS))


def _json(d: Path) -> str:
    (d / "data.json").write_text(json.dumps({"version": 1, "data": ROWS}, indent=2))
    return "data.json"


def _csv(d: Path) -> str:
    return str(write_csv(d / "data.csv", ROWS))


def _tsv(d: Path) -> str:
    (d / "data.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS))
    return "data.tsv"


def _parquet(d: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), d / "data.parquet")
    return "data.parquet"


def _text(d: Path) -> str:
    (d / "notes.txt").write_text("\n\n".join(r["text"] for r in ROWS) + "\n")
    return "notes.txt"


def _folder(d: Path) -> str:
    (d / "parts").mkdir()
    write_jsonl(d / "parts" / "a.jsonl", ROWS[:5])
    write_csv(d / "parts" / "b.csv", ROWS[5:])
    return "parts"


def _class_folders(d: Path) -> str:
    for i, r in enumerate(ROWS):
        (d / "reviews" / r["label"]).mkdir(parents=True, exist_ok=True)
        (d / "reviews" / r["label"] / f"{i:02d}.txt").write_text(r["text"])
    return "reviews"


def _sqlite(d: Path) -> str:
    con = sqlite3.connect(d / "reviews.db")
    con.execute("CREATE TABLE reviews (id INTEGER, body TEXT, stars TEXT)")
    con.executemany(
        "INSERT INTO reviews VALUES (?, ?, ?)", [(i, r["text"], r["label"]) for i, r in enumerate(ROWS)]
    )
    con.commit()
    con.close()
    return "sqlite:///reviews.db"


def _page(text: str) -> str:
    head = "<head><title>t</title><script>x()</script></head>"
    return f"<html>{head}<body><nav>Home</nav><p>{text}</p></body></html>"


def _html(d: Path) -> str:
    (d / "pages").mkdir()
    for i, r in enumerate(ROWS):
        (d / "pages" / f"{i:02d}.html").write_text(_page(r["text"]))
    return "pages"


def _hf_disk(d: Path) -> str:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(ROWS).save_to_disk(str(d / "saved"))
    return "saved"


SQL = {"query": "SELECT body, stars FROM reviews", "text_column": "body", "label_column": "stars"}

# kind: (make source, extra data config, reader named in the manifest, expected records)
CASES: dict[str, tuple[Callable[[Path], str], dict[str, Any], str, list[dict[str, str]]]] = {
    "jsonl": (_jsonl, {}, "jsonl", ROWS),
    "json": (_json, {}, "json", ROWS),
    "csv": (_csv, {}, "csv", ROWS),
    "tsv": (_tsv, {}, "csv", ROWS),
    "parquet": (_parquet, {}, "parquet", ROWS),
    "text": (_text, {}, "text", TEXTS),
    "folder": (_folder, {}, "folder", ROWS),
    "class-folders": (_class_folders, {}, "class-folders", ROWS),
    "sqlite": (_sqlite, SQL, "sql", ROWS),
    "html": (_html, {}, "folder", TEXTS),
    "hf-disk": (_hf_disk, {}, "hf-disk", ROWS),
}  # fmt: skip


def write_config(d: Path, path: str, extra: dict[str, Any]) -> None:
    data = {"path": path, "output_dir": "ds", **extra}
    (d / "prep.yaml").write_text(
        json.dumps({"data": data, "model": {"name": str(TOKENIZER)}})
    )  # JSON is YAML


def prepared(d: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    manifest = json.loads((d / "ds" / "manifest.json").read_text())
    records = []
    for split in ("train", "validation", "test"):
        records += [json.loads(line) for line in (d / "ds" / f"{split}.jsonl").read_text().splitlines()]
    return manifest, records


def key(r: dict[str, Any]) -> str:
    return json.dumps(r, sort_keys=True)


@pytest.mark.parametrize("kind", list(CASES))
def test_prepare_from_each_source_kind(tmp_path: Path, cli: Any, kind: str) -> None:
    make, extra, reader, expected = CASES[kind]
    write_config(tmp_path, make(tmp_path), extra)
    result = cli("prepare", "prep.yaml")
    assert result.returncode == 0, result.stderr
    manifest, records = prepared(tmp_path)
    assert manifest["source"]["reader"] == reader
    assert manifest["format"] == ("classification" if "label" in expected[0] else "text")
    assert manifest["counts"]["read"] == 12
    assert sorted(map(key, records)) == sorted(map(key, expected))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "site"
    root.mkdir()
    for i, r in enumerate(ROWS):
        (root / f"{i:02d}.html").write_text(_page(r["text"]))
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prepare_from_a_list_of_urls(tmp_path: Path, cli: Any, site: str) -> None:
    (tmp_path / "pages.txt").write_text("".join(f"{site}/{i:02d}.html\n" for i in range(12)))
    write_config(tmp_path, "pages.txt", {})
    result = cli("prepare", "prep.yaml")
    assert result.returncode == 0, result.stderr
    manifest, records = prepared(tmp_path)
    assert manifest["source"]["reader"] == "html"
    assert sorted(r["text"] for r in records) == sorted(r["text"] for r in ROWS)


def test_prepare_stops_on_a_bad_row_and_writes_nothing(tmp_path: Path, cli: Any) -> None:
    lines = [json.dumps(r) for r in ROWS]
    lines[6] = '{"text": "a missing comma" "label": "neutral"}'
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    write_config(tmp_path, "data.jsonl", {})
    result = cli("prepare", "prep.yaml")
    assert result.returncode == 2
    assert (
        "data.jsonl:7: [invalid_json] not valid JSON: Expecting ',' delimiter at column 28" in result.stderr
    )
    assert not (tmp_path / "ds").exists()


def test_prepare_never_replaces_a_folder_it_did_not_make(tmp_path: Path, cli: Any) -> None:
    """The CLI refuses in one line (no traceback, exit 2): an output over the input's folder, or over `.`."""
    (tmp_path / "raw").mkdir()
    write_jsonl(tmp_path / "raw" / "data.jsonl", ROWS)
    (tmp_path / "raw" / "notes.md").write_text("mine")
    for output_dir in ("raw", "."):
        data = {"path": "raw/data.jsonl", "output_dir": output_dir}
        (tmp_path / "prep.yaml").write_text(json.dumps({"data": data, "model": {"name": str(TOKENIZER)}}))
        result = cli("prepare", "prep.yaml")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"data.output_dir: the output folder {output_dir} holds the input" in result.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["data.jsonl", "notes.md"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on a Unix socket (skipped where its binaries or psycopg are missing)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl)")
    pytest.importorskip("psycopg")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user and not shutil.which("runuser"):
        pytest.skip("running as root without runuser to start PostgreSQL as another user")
    root = Path(tempfile.mkdtemp(prefix="tf-pg-"))
    root.chmod(0o777)  # the server may run as another user (PostgreSQL refuses to run as root)
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    options = f"-k {root} -c listen_addresses=''"
    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "tf", "--no-sync")
        run(pg_ctl, "-D", str(data), "-o", options, "-w", "-l", f"{root}/log", "start")
    except subprocess.CalledProcessError as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL server here: {err.stderr.decode(errors='replace')[-300:]}")
    url = f"postgresql+psycopg://tf@/postgres?host={root}"
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE reviews (id INTEGER, body TEXT, stars TEXT)"))
        for i, r in enumerate(ROWS):
            conn.execute(
                sa.text("INSERT INTO reviews VALUES (:i, :b, :s)"), {"i": i, "b": r["text"], "s": r["label"]}
            )
        # A write hidden in a function: the query check cannot see it, the read-only transaction must stop it.
        conn.execute(
            sa.text("CREATE FUNCTION wipe() RETURNS bigint LANGUAGE sql AS 'DELETE FROM reviews RETURNING 1'")
        )
    engine.dispose()
    try:
        yield url
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _count(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM reviews")).scalar_one())
    finally:
        engine.dispose()


def test_prepare_from_postgresql(tmp_path: Path, cli: Any, postgres: str) -> None:
    write_config(tmp_path, postgres, SQL)
    result = cli("prepare", "prep.yaml")
    assert result.returncode == 0, result.stderr
    manifest, records = prepared(tmp_path)
    assert manifest["source"]["reader"] == "sql" and manifest["counts"]["read"] == 12
    assert sorted(map(key, records)) == sorted(map(key, ROWS))


def test_postgresql_is_read_only_by_construction(postgres: str) -> None:
    from tuneforge.config import DataConfig
    from tuneforge.data.sources import read_rows
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match="it contains DROP; the query was not run"):
        list(read_rows(postgres, DataConfig(query="DROP TABLE reviews")))
    with pytest.raises(TuneforgeError) as err:
        list(read_rows(postgres, DataConfig(query="SELECT wipe() AS text")))
    assert "cannot execute DELETE in a read-only transaction" in str(err.value)
    assert _count(postgres) == 12
