"""argparse value types that reject bad input with one clear message naming the option."""
from __future__ import annotations

import argparse

ETA_RULES = ("sqrt_one_minus_alpha_bar",)


def int_at_least(name: str, low: int = 1):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got {s!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"{name}: must be ≥ {low}, got {v}")
        return v
    return parse


def nonneg_float(name: str):
    """A number ≥ 0; options whose name ends in 'eta' also take the rule 'sqrt_one_minus_alpha_bar'."""
    def parse(s: str):
        if name.endswith("eta") and s in ETA_RULES:
            return s
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {s!r}")
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"{name}: must be ≥ 0, got {v}")
        return v
    return parse
