"""Reading the numbers a schedule file holds: YAML gives ``1e-5`` as a string, and ``true`` is not a rate."""

from __future__ import annotations

import math
from typing import Any


def non_negative_number(value: Any) -> float | None:
    """``value`` as a finite float >= 0, or ``None`` when it is not one (a bool, a word, NaN, a negative number).

    Example::

        >>> non_negative_number("1e-5"), non_negative_number(True), non_negative_number(-1)
        (1e-05, None, None)
    """
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None
