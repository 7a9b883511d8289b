"""Argument types shared by the ``voice-agent`` commands: a bad value is a one-line usage
error naming the option, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def bounded_int(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}-{high}, got {number}")
        return number

    return parse


def positive_number(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {number}")
        return number

    return parse
