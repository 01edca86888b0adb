"""Parquet: read one record batch at a time with pyarrow, so memory holds a batch, not the file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import BATCH_ROWS, RawRow
from tuneforge.errors import TuneforgeError


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(location)
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise TuneforgeError(f"not a readable Parquet file: {err}", where=str(path)) from None
    row = 0
    for batch in file.iter_batches(batch_size=BATCH_ROWS):
        for fields in batch.to_pylist():
            row += 1
            yield RawRow(fields, f"{path} row {row}")
