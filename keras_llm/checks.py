"""Argument checks shared by the layers and models.

Each raises a `ValueError` naming the class, the argument, what was expected
and what came, as the conventions ask.
"""


def check_positive_int(owner, name, value, allow_none=False):
    """Raises unless `value` is an int > 0 (or `None` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"`{owner}` expects `{name}` to be a positive integer. "
            f"Received: {name}={value!r}."
        )


def check_rate(owner, name, value):
    """Raises unless `value` is a dropout-style rate in [0, 1)."""
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{owner}` expects `{name}` in [0, 1). Received: {name}={value!r}."
        )
