"""What counts as a number in a report, a metric history or a YAML value (bools never do)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeGuard


def is_number(value: Any) -> TypeGuard[float]:
    """A real number, NaN and infinities included (a blown-up loss is still a report's number)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite(value: Any) -> TypeGuard[float]:
    """A real number that is neither NaN nor infinite: a usable value of a param or a metric."""
    return is_number(value) and math.isfinite(value)


def finite_points(points: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """``(epoch, value)`` pairs with a finite value, in epoch order."""
    return sorted((int(s), float(v)) for s, v in points if is_finite(v))
