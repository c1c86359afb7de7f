"""Errors a user can cause (bad path, option or file).

The `keras-llm` command prints these as one line and exits non-zero; any
other exception is a bug and keeps its traceback. They subclass `ValueError`
so library callers can catch them as such.
"""


class UserError(ValueError):
    """An input problem the user can fix; its message says what to do."""
