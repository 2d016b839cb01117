"""Argument checks with the message style of tfft: what is wrong and what was received."""

from __future__ import annotations

import math
import numbers
from typing import Any


def check_int(
    name: str, value: Any, *, minimum: int = 1, error: type[Exception] = ValueError
) -> int:
    """Returns `value` as an int if it is an integer (not a bool) >= `minimum`, else raises.

    NumPy integers count as integers.

    Args:
        name: str. The argument's name, quoted in the message.
        value: the value to check.
        minimum: int. The smallest valid value. Defaults to 1.
        error: the exception class to raise. Defaults to ValueError.

    Example:

    >>> check_int("epochs", 3)
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise error(f"{name} must be {what}. Received: {name}={value!r}")
    return int(value)


def check_positive_number(
    name: str, value: Any, *, allow_none: bool = False, error: type[Exception] = ValueError
) -> float | None:
    """Returns `value` as a float if it is a finite number > 0, else raises.

    Args:
        name: str. The argument's name, quoted in the message.
        value: the value to check.
        allow_none: bool. Let None through (returned as None). Defaults to False.
        error: the exception class to raise. Defaults to ValueError.

    Example:

    >>> check_positive_number("learning_rate", 1e-3)
    0.001
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not value > 0
        or not math.isfinite(value)
    ):
        what = "a positive number or None" if allow_none else "a positive number"
        raise error(f"{name} must be {what}. Received: {name}={value!r}")
    return float(value)


def check_split_fractions(val_fraction: Any, test_fraction: Any, what: str = "examples") -> None:
    """Raises unless both shares lie in [0, 1) and leave some of the data for training.

    Args:
        val_fraction: the share of the data held out for validation.
        test_fraction: the share of the data held out for testing.
        what: str. What the data is made of, for the message. Defaults to "examples".

    Example:

    >>> check_split_fractions(0.1, 0.2)
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not 0 <= value < 1):
            raise ValueError(f"{name}: expected a number in [0, 1). Received: {value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must leave {what} for training.")
