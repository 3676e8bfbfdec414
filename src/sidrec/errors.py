"""User-facing errors.

A `SidrecError` is a mistake in what the user gave us (a path, a file's content, a
setting). The CLI prints its message on one line and exits with code 2; it never shows a
traceback for one. Messages say what is wrong, where (file, line, field) and how to fix it.
"""


class SidrecError(Exception):
    """A user mistake, reported as one line and exit code 2."""


class UnknownItem(SidrecError):
    """A history holds item ids the catalogue does not (`on_unknown="error"`)."""

    def __init__(self, row: int, unknown: list[str],
                 fix: str = "add it with add_items() or load with on_unknown='skip'") -> None:
        self.row, self.unknown = row, unknown
        super().__init__(f"history {row}: unknown item id {unknown[0]!r} ({len(unknown)} "
                         f"unknown); {fix}")


class ItemError(SidrecError):
    """Item `row` of an add is at fault (`duplicate`: its id exists; `field`: which one)."""

    def __init__(self, row: int, message: str, duplicate: bool = False,
                 field: str = "") -> None:
        super().__init__(f"items[{row}]{message}")
        self.row, self.duplicate, self.field = row, duplicate, field
