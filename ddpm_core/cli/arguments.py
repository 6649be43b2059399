"""Argument types of the ``ddpm`` subcommands' options (torch-free: the parsers import only these)."""

from __future__ import annotations

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); '' -> ()."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one guidance scale")
    return values


def name_list(text: str) -> tuple[str, ...]:
    """'a,b, c' -> ('a', 'b', 'c')."""
    return tuple(part.strip() for part in text.split(","))
