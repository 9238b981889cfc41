"""How figures are written in sentences and tables: one spelling everywhere."""

from __future__ import annotations

from eval.results import CI


def fixed(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3f}"


def interval(ci95: CI) -> str:
    """A 95% CI as 'low to high', signed."""
    return f"{signed(ci95[0])} to {signed(ci95[1])}"
