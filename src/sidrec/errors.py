"""User-facing errors.

A `SidrecError` is a mistake in what the user gave us (a path, a file's content, a
setting). The CLI prints its message on one line and exits with code 2; it never shows a
traceback for one. Messages say what is wrong, where (file, line, field) and how to fix it.
"""


class SidrecError(Exception):
    """A user mistake, reported as one line and exit code 2."""
