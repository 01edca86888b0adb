"""A dataset saved with `datasets.save_to_disk` (a Dataset or a DatasetDict), read memory-mapped in batches.

A DatasetDict's split name is added as a `split` field (unless the rows have one), so data.split_column=split
keeps the saved splits.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.data.sources.base import BATCH_ROWS, RawRow
from tuneforge.errors import TuneforgeError

MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    try:
        import datasets
    except ImportError:
        raise TuneforgeError(
            "reading a saved Hugging Face dataset needs the `datasets` package",
            where="data.path",
            fix="pip install 'tuneforge[datasets]'",
        ) from None
    path = Path(location)
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise TuneforgeError(f"not a dataset saved with save_to_disk: {err}", where=str(path)) from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in parts:
        label = f" [{split}]" if split else ""
        row = 0
        for batch in ds.iter(batch_size=BATCH_ROWS):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                row += 1
                fields = dict(zip(columns, values, strict=True))
                if split and "split" not in fields:
                    fields["split"] = split
                yield RawRow(fields, f"{path}{label} row {row}")
