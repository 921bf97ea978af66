"""Value checks for command-line options, shared by every ``rnncast`` command and by ``ServeOptions``.

One rule per kind of value: :func:`check_number` says whether a number is acceptable and why not,
:func:`number` turns that rule into an argparse ``type=`` (so ``--rate 0`` is refused by argparse with
the same words that ``ServeOptions`` uses for a value given in code). Standard library only.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["check_number", "int_at_least", "number", "partition_list", "positive_float"]


def check_number(value: float, minimum: float | None = None, *, strictly: bool = False) -> str | None:
    """Why ``value`` is not acceptable (None: it is): it must be finite and at least (or above) ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if minimum is not None and (value < minimum or (strictly and value == minimum)):
        return f"must be {'>' if strictly else '>='} {minimum:g}, got {value:g}"
    return None


def number(kind: type, minimum: float | None = None, *, strictly: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` that parses ``kind`` (int or float) and applies :func:`check_number`."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        reason = check_number(value, minimum, strictly=strictly)
        if reason:
            raise argparse.ArgumentTypeError(reason)
        return float(value) if kind is float else int(value)

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def int_at_least(minimum: int) -> Callable[[str], float]:
    """An integer >= ``minimum``."""
    return number(int, minimum)


positive_float = number(float, 0, strictly=True)


def partition_list(text: str) -> tuple[int, ...]:
    """``"0,2,5-7"`` -> ``(0, 2, 5, 6, 7)``."""
    partitions: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if low > high:
                    raise ValueError
                partitions.update(range(low, high + 1))
            else:
                partitions.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected partition numbers like 0,1 or 0-3, got {text!r}") from None
    if not partitions or min(partitions) < 0:
        raise argparse.ArgumentTypeError(f"expected partition numbers >= 0, got {text!r}")
    return tuple(sorted(partitions))
