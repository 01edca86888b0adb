"""Every source kind: what `detect_source` calls it, and the exact rows and locations its reader yields."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data.sources import describe_source, detect_source, read_rows
from tuneforge.data.sources.sql import display_url
from tuneforge.errors import TuneforgeError

ROWS = [
    {"text": "the soup was great", "label": "positive"},
    {"text": "the bus was late", "label": "negative"},
    {"text": "café au lait", "label": "neutral"},
]


def prepare_rows(location: str, **cfg: object) -> None:
    describe_source(location, DataConfig(**cfg))
    list(read_rows(location, DataConfig(**cfg)))


def rows(location: str | Path, **cfg: object) -> list[tuple[dict[str, object], str, tuple[str, str] | None]]:
    return [(r.fields, r.where, r.problem) for r in read_rows(location, DataConfig(**cfg))]


def good(where: list[str]) -> list[tuple[dict[str, object], str, None]]:
    return [(r, w, None) for r, w in zip(ROWS, where, strict=True)]


def test_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    assert detect_source(p, DataConfig()) == "jsonl"
    assert rows(p) == good([f"{p}:1", f"{p}:2", f"{p}:3"])


def test_json_array(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert detect_source(p, DataConfig()) == "json"
    assert rows(p) == good([f"{p} $[0]", f"{p} $[1]", f"{p} $[2]"])


def test_json_object_holding_records(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"version": 2, "data": ROWS, "tags": ["a", "b"]}), encoding="utf-8")
    assert rows(p) == good([f"{p} $.data[0]", f"{p} $.data[1]", f"{p} $.data[2]"])


def test_json_object_of_columns(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    columns = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}
    p.write_text(json.dumps(columns), encoding="utf-8")
    assert rows(p) == good([f"{p} $.text[0]", f"{p} $.text[1]", f"{p} $.text[2]"])


def test_json_columns_of_different_length_are_an_error(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"text": ["a", "b"], "label": ["x"]}), encoding="utf-8")
    with pytest.raises(TuneforgeError) as err:
        rows(p)
    assert err.value.where == str(p)
    assert err.value.what == "[wrong_type] the columns have different lengths: text: 2, label: 1"


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "d.json"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert detect_source(p, DataConfig()) == "jsonl"
    assert [w for _, w, _ in rows(p)] == [f"{p}:1", f"{p}:2", f"{p}:3"]


def test_csv_sniffs_delimiter_and_tsv_uses_tabs(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text("text;label\n" + "".join(f"{r['text']};{r['label']}\n" for r in ROWS), encoding="utf-8")
    assert rows(p) == good([f"{p}:2", f"{p}:3", f"{p}:4"])
    t = tmp_path / "d.tsv"
    t.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS), encoding="utf-8")
    assert rows(t) == good([f"{t}:2", f"{t}:3", f"{t}:4"])


def test_csv_delimiter_and_encoding_overrides(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(("text|label\n" + "".join(f"{r['text']}|{r['label']}\n" for r in ROWS)).encode("latin-1"))
    assert rows(p, delimiter="|", encoding="latin-1") == good([f"{p}:2", f"{p}:3", f"{p}:4"])


def test_csv_multiline_quoted_field_is_located_at_its_first_line(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"two\nlines",positive\nshort,negative\n', encoding="utf-8")
    assert rows(p) == [
        ({"text": "two\nlines", "label": "positive"}, f"{p}:2", None),
        ({"text": "short", "label": "negative"}, f"{p}:4", None),
    ]


def test_csv_legacy_encoding_is_sniffed(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes("text,label\nnaïve déjà vu,positive\nà la carte,neutral\n".encode("cp1252"))
    assert [f for f, _, _ in rows(p)] == [
        {"text": "naïve déjà vu", "label": "positive"},
        {"text": "à la carte", "label": "neutral"},
    ]


def test_parquet_reads_record_batches(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS * 700), p, row_group_size=500)  # several batches
    assert detect_source(p, DataConfig()) == "parquet"
    out = rows(p)
    assert len(out) == 2100
    assert out[:3] == good([f"{p} row 1", f"{p} row 2", f"{p} row 3"])
    assert out[2099] == (ROWS[2], f"{p} row 2100", None)


def test_plain_text_paragraphs_lines_and_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "d.txt"
    p.write_text("First paragraph,\nsecond line.\n\n\nSecond paragraph.\n", encoding="utf-8")
    assert detect_source(p, DataConfig()) == "text"
    assert rows(p) == [
        ({"text": "First paragraph,\nsecond line."}, f"{p}:1", None),
        ({"text": "Second paragraph."}, f"{p}:5", None),
    ]
    assert [w for _, w, _ in rows(p, text_unit="line")] == [f"{p}:1", f"{p}:2", f"{p}:5"]
    assert rows(p, text_unit="file") == [({"text": p.read_text()}, str(p), None)]


def test_folder_dispatches_by_suffix_and_skips_hidden_and_readme(tmp_path: Path) -> None:
    d = tmp_path / "data"
    (d / "more").mkdir(parents=True)
    (d / "a.jsonl").write_text(json.dumps({"text": "from jsonl"}) + "\n")
    (d / "more" / "b.csv").write_text("text\nfrom csv\n")
    (d / "c.txt").write_text("from a text file\n\nsame file")
    (d / ".hidden.jsonl").write_text("not data")
    (d / "README.md").write_text("notes")
    assert detect_source(d, DataConfig()) == "folder"
    assert rows(d) == [
        ({"text": "from jsonl"}, f"{d / 'a.jsonl'}:1", None),
        ({"text": "from a text file\n\nsame file"}, str(d / "c.txt"), None),
        ({"text": "from csv"}, f"{d / 'more' / 'b.csv'}:2", None),
    ]
    assert describe_source(d, DataConfig()).files == [d / "a.jsonl", d / "c.txt", d / "more" / "b.csv"]


def test_folder_reports_files_no_reader_knows(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    (tmp_path / "b.xlsx").write_bytes(b"PK")
    assert rows(tmp_path)[1] == (
        {},
        str(tmp_path / "b.xlsx"),
        ("unsupported_file", "no reader for '.xlsx' files; remove it or convert it"),
    )


def test_class_folders_label_is_the_folder_name(tmp_path: Path) -> None:
    for label, texts in {"negative": ["bad soup"], "positive": ["good tea", "nice bus"]}.items():
        (tmp_path / label).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / label / f"{i}.txt").write_text(t)
    (tmp_path / "README.txt").write_text("two classes")
    assert detect_source(tmp_path, DataConfig()) == "class-folders"
    assert rows(tmp_path) == [
        ({"text": "bad soup", "label": "negative"}, str(tmp_path / "negative" / "0.txt"), None),
        ({"text": "good tea", "label": "positive"}, str(tmp_path / "positive" / "0.txt"), None),
        ({"text": "nice bus", "label": "positive"}, str(tmp_path / "positive" / "1.txt"), None),
    ]


def test_split_folders_holding_class_folders(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            (tmp_path / split / label).mkdir(parents=True)
            (tmp_path / split / label / "1.txt").write_text(f"{split} {label}")
    assert detect_source(tmp_path, DataConfig()) == "class-folders"
    assert [f for f, _, _ in rows(tmp_path)] == [
        {"text": "test neg", "label": "neg", "split": "test"},
        {"text": "test pos", "label": "pos", "split": "test"},
        {"text": "train neg", "label": "neg", "split": "train"},
        {"text": "train pos", "label": "pos", "split": "train"},
    ]


def test_a_folder_with_a_data_file_beside_subfolders_is_not_class_folders(tmp_path: Path) -> None:
    for label in ("neg", "pos"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.txt").write_text(label)
    (tmp_path / "extra.jsonl").write_text("{}\n")
    assert detect_source(tmp_path, DataConfig()) == "folder"


def _sqlite(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE reviews (id INTEGER, text TEXT, label TEXT)")
    con.executemany(
        "INSERT INTO reviews VALUES (?, ?, ?)", [(i, r["text"], r["label"]) for i, r in enumerate(ROWS)]
    )
    con.commit()
    con.close()
    return path


def test_sqlite_url_query_and_single_table_default(tmp_path: Path) -> None:
    db = _sqlite(tmp_path / "r.db")
    url = f"sqlite:///{db}"
    assert detect_source(url, DataConfig()) == "sql"
    assert rows(url, query="SELECT text, label FROM reviews ORDER BY id") == good(
        [f"{url} row 1", f"{url} row 2", f"{url} row 3"]
    )
    assert [f["id"] for f, _, _ in rows(url)] == [0, 1, 2]  # one table: read whole
    assert rows(db, query="SELECT text, label FROM reviews")[0] == (ROWS[0], f"{db} row 1", None)
    source = describe_source(url, DataConfig())
    assert (source.kind, source.files, source.remote) == ("sql", [db], False)


def test_sqlite_is_opened_read_only_and_errors_name_the_query(tmp_path: Path) -> None:
    db = _sqlite(tmp_path / "r.db")
    before = db.read_bytes()
    with pytest.raises(TuneforgeError) as err:
        rows(f"sqlite:///{db}", query="DELETE FROM reviews")
    assert err.value.where == "data.query"
    assert err.value.what.startswith("data.query must be one read-only SELECT, but it contains DELETE")
    assert db.read_bytes() == before
    with pytest.raises(TuneforgeError, match="does not exist"):
        rows(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()


def table_rows(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT * FROM reviews ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite", "SQLite+aiosqlite"])
def test_a_drop_table_never_runs_whatever_the_url(tmp_path: Path, scheme: str) -> None:
    db = _sqlite(tmp_path / "r.db")
    before = table_rows(db)
    with pytest.raises(TuneforgeError) as err:
        prepare_rows(f"{scheme}:///{db}", query="DROP TABLE reviews")
    assert str(err.value) == (
        "data.query: data.query must be one read-only SELECT, but it contains DROP; the query was not run\n"
        '  fix: write one SELECT (or WITH ... SELECT) that only reads, e.g. "SELECT text, label FROM reviews"'
    )
    assert table_rows(db) == before


@pytest.mark.parametrize(
    ("query", "what"),
    [
        ("SELECT 1 AS text; DROP TABLE reviews", "data.query holds 2 statements"),
        ("ATTACH DATABASE '{new}' AS x", "it contains ATTACH"),
        ("WITH gone AS (DELETE FROM reviews RETURNING *) SELECT * FROM gone", "it contains DELETE"),
        ("SELECT * INTO copy FROM reviews", "it contains SELECT ... INTO"),
        ("PRAGMA journal_mode=WAL", "it contains PRAGMA"),
        ("VACUUM INTO '{new}'", "it contains VACUUM"),
        ("SELECT load_extension('{new}')", "data.query calls load_extension()"),
        ("SELEC text FROM reviews", "data.query cannot be checked as a read-only query"),
    ],
)
def test_only_one_read_only_query_is_run(tmp_path: Path, query: str, what: str) -> None:
    db = _sqlite(tmp_path / "r.db")
    before = db.read_bytes()
    new = tmp_path / "created.db"
    with pytest.raises(TuneforgeError) as err:
        rows(f"sqlite+pysqlite:///{db}", query=query.format(new=new))
    assert what in err.value.what and err.value.where == "data.query"
    assert db.read_bytes() == before and not new.exists()


def test_with_and_union_queries_read(tmp_path: Path) -> None:
    db = _sqlite(tmp_path / "r.db")
    url = f"sqlite+pysqlite:///{db}"
    query = "WITH r AS (SELECT text, label, id FROM reviews) SELECT text, label FROM r ORDER BY id"
    assert rows(url, query=query) == good([f"{url} row 1", f"{url} row 2", f"{url} row 3"])
    union = (
        "SELECT text, label FROM reviews WHERE id = 0 UNION ALL SELECT text, label FROM reviews WHERE id = 1"
    )
    assert [f for f, _, _ in rows(url, query=union)] == ROWS[:2]


def test_the_sqlite_connection_itself_refuses_writes_and_attach(tmp_path: Path) -> None:
    """Even a statement the parser let through cannot write: the authorizer and mode=ro stop it."""
    from tuneforge.data.sources import sql

    db = _sqlite(tmp_path / "r.db")
    before = table_rows(db)
    new = tmp_path / "created.db"
    for query in ("DELETE FROM reviews", f"ATTACH DATABASE '{new}' AS x", "PRAGMA user_version = 7"):
        with pytest.raises(TuneforgeError, match="not authorized"):
            list(sql._read_sqlite(db, str(db), DataConfig(query=query)))
    assert table_rows(db) == before and not new.exists()


def test_the_sqlalchemy_path_always_rolls_back(tmp_path: Path) -> None:
    """Past the query check, whatever a statement does through SQLAlchemy is rolled back."""
    from tuneforge.data.sources import sql

    db = _sqlite(tmp_path / "r.db")
    before = table_rows(db)
    url = f"sqlite+pysqlite:///{db}"
    deleted = list(sql._read_sqlalchemy(url, DataConfig(query="DELETE FROM reviews RETURNING text")))
    assert len(deleted) == 3
    assert table_rows(db) == before
    assert next(r.fields for r in sql._read_sqlalchemy(url, DataConfig())) == {"id": 0, **ROWS[0]}


def test_other_database_urls_are_checked_before_connecting() -> None:
    with pytest.raises(TuneforgeError, match="it contains DROP"):
        describe_source("postgresql://bob:pw@db.invalid/reviews", DataConfig(query="DROP TABLE reviews"))
    from tuneforge.data.sources.sql import READ_ONLY_TRANSACTION

    assert READ_ONLY_TRANSACTION["postgresql"] == "SET TRANSACTION READ ONLY"


def test_database_passwords_never_appear_in_locations() -> None:
    assert display_url("postgresql://bob:s3cret@db.example:5432/reviews") == (
        "postgresql://bob:***@db.example:5432/reviews"
    )


PAGE = """<html><head><title>Soup review</title><style>p {color: red}</style></head>
<body><nav><a href="/">Home</a> | <a href="/menu">Menu</a></nav>
<header>Site banner</header>
<main><h1>The soup</h1><p>It was <b>great</b>, really.</p><script>track()</script>
<p>Second&nbsp;paragraph &amp; more.</p></main>
<footer>© 2024</footer></body></html>"""


def test_html_file_keeps_the_main_text_only(tmp_path: Path) -> None:
    p = tmp_path / "page.html"
    p.write_text(PAGE, encoding="utf-8")
    assert detect_source(p, DataConfig()) == "html"
    assert rows(p) == [
        (
            {
                "text": "The soup\n\nIt was great, really.\n\nSecond paragraph & more.",
                "title": "Soup review",
                "url": str(p),
            },
            str(p),
            None,
        )
    ]


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.html").write_text(PAGE, encoding="utf-8")
    (site / "b.txt").write_text("plain words", encoding="utf-8")
    handler = partial(SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_list_fetches_each_page(tmp_path: Path, web: str) -> None:
    p = tmp_path / "pages.txt"
    p.write_text(f"# pages to read\n{web}/a.html\n\n{web}/b.txt\n{web}/missing.html\n", encoding="utf-8")
    assert detect_source(p, DataConfig()) == "html"
    assert describe_source(p, DataConfig()).remote is True
    out = rows(p)
    assert out[0][0]["title"] == "Soup review"
    assert out[0][0]["text"].startswith("The soup\n\nIt was great")
    assert out[0][1] == f"{p}:2"
    assert out[1] == ({"text": "plain words", "title": "", "url": f"{web}/b.txt"}, f"{p}:4", None)
    assert out[2] == (
        {"url": f"{web}/missing.html"},
        f"{p}:5",
        ("fetch_failed", f"could not fetch {web}/missing.html: File not found"),
    )


def test_saved_hf_dataset_and_dataset_dict(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert detect_source(tmp_path / "one", DataConfig()) == "hf-disk"
    assert rows(tmp_path / "one") == good([f"{tmp_path / 'one'} row {i}" for i in (1, 2, 3)])
    d = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:])}
    )
    d.save_to_disk(str(tmp_path / "dict"))
    out = rows(tmp_path / "dict")
    assert [(f["split"], w) for f, w, _ in out] == [
        ("train", f"{tmp_path / 'dict'} [train] row 1"),
        ("train", f"{tmp_path / 'dict'} [train] row 2"),
        ("test", f"{tmp_path / 'dict'} [test] row 1"),
    ]


def test_max_rows_stops_reading(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    assert len(rows(p, max_rows=2)) == 2


def test_unknown_source_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(TuneforgeError) as err:
        detect_source(tmp_path / "x.jsonl", DataConfig(source="excel"))
    assert err.value.where == "data.source"
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(TuneforgeError) as err:
        detect_source(tmp_path / "x.bin", DataConfig())
    assert err.value.what == f"cannot tell how to read {tmp_path / 'x.bin'} from its name"


@pytest.mark.parametrize("name", ["missing.txt", "missing.json", "missing.csv", "sqlite:///missing.db"])
def test_a_missing_source_says_so(tmp_path: Path, name: str) -> None:
    location = name.replace("missing", str(tmp_path / "missing"))
    with pytest.raises(TuneforgeError) as err:
        rows(location)
    assert (err.value.where, err.value.what) == (
        "data.path",
        f"{tmp_path}/{name.removeprefix('sqlite:///')} does not exist",
    )


def test_a_huge_line_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    p = tmp_path / "d.jsonl"
    with open(p, "w") as f:
        f.write(json.dumps({"text": "before"}) + "\n")
        f.write('{"text": "' + "x" * (20 * 2**20) + '"}\n')  # a 20 MiB row
        f.write(json.dumps({"text": "after"}) + "\n")
    tracemalloc.start()
    try:
        out = rows(p, max_row_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == [
        ({"text": "before"}, f"{p}:1", None),
        ({}, f"{p}:2", ("row_too_large", f"line is longer than {2**20} characters")),
        ({"text": "after"}, f"{p}:3", None),
    ]
    assert peak < 8 * 2**20  # never the whole 20 MiB line


def test_a_table_name_cannot_inject_sql(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    con = sqlite3.connect(db)
    con.execute(
        'CREATE TABLE "x"" UNION SELECT sql, 1, 2 FROM sqlite_master --" (id INTEGER, text TEXT, label TEXT)'
    )
    con.execute(
        """INSERT INTO "x"" UNION SELECT sql, 1, 2 FROM sqlite_master --" VALUES (1, 'only row', 'a')"""
    )
    con.commit()
    con.close()
    assert [f for f, _, _ in rows(f"sqlite:///{db}")] == [{"id": 1, "text": "only row", "label": "a"}]
