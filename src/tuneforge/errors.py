"""The one exception type for mistakes a user can make (bad file, bad config, missing model).

The CLI prints its message without a traceback and exits non-zero; internal bugs keep their traceback.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    """A problem the user can fix: the message says what is wrong, where, and what to do."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class DiskFull(TuneforgeError):
    """The disk filled up while tuneforge wrote `filename`; what was being written was discarded."""

    def __init__(self, what: str, *, filename: str, fix: str | None = None) -> None:
        self.filename = filename
        super().__init__(what, fix=fix)
