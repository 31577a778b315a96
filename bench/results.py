"""The run's figures: their shape (also bench/results.json's), and how one figure prints in the report and the log."""

from __future__ import annotations

from typing import Any, TypedDict


# One entry per section; within each, server key -> what its workloads returned (None for a workload that failed).
# Functional form: "list" is one of the keys.
class Results(TypedDict):
    large: dict[str, Any]
    small: dict[str, Any]
    list: dict[str, Any]
    idle: dict[str, Any]
    s3: dict[str, Any]
    big: dict[str, Any]
    errors: list[str]


def new_results() -> Results:
    return {"large": {}, "small": {}, "list": {}, "idle": {}, "s3": {}, "big": {}, "errors": []}


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.0f}"


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"  # a zero is a failed measurement, not an infinite ratio


def dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]..., or None as soon as a level is missing or None: a failed workload leaves a hole, not an error."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d
