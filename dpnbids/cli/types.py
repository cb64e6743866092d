"""argparse ``type=`` validators shared by ``dpnbids`` and ``dpnbids-synth``.

Each returns the converted value or raises ``argparse.ArgumentTypeError`` with a
message saying what was expected; argparse turns that into one usage error line.
"""
from __future__ import annotations

import argparse
import math


def _convert(value: str, kind, expected: str):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None


def positive_int(value: str) -> int:
    ivalue = _convert(value, int, "a positive integer")
    if ivalue < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return ivalue


def nonneg_int(value: str) -> int:
    ivalue = _convert(value, int, "an integer >= 0")
    if ivalue < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return ivalue


def positive_float(value: str) -> float:
    fvalue = _convert(value, float, "a positive number")
    if not fvalue > 0 or math.isinf(fvalue):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return fvalue


def nonneg_float(value: str) -> float:
    fvalue = _convert(value, float, "a number >= 0")
    if not fvalue >= 0 or math.isinf(fvalue):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return fvalue


def probability(value: str) -> float:
    fvalue = positive_float(value)
    if fvalue >= 1:
        raise argparse.ArgumentTypeError(f"expected a p threshold in (0, 1), got {value!r}")
    return fvalue
