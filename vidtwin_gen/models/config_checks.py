# Copyright 2026 The vidtwin-gen authors. MIT License.
"""Range checks for model configs, shared by `AutoencoderVidTwin` and `VidTwinTransformer3DModel`.

A config value out of range must fail at construction with a message naming the key, the value and what is
allowed, not later as a `ZeroDivisionError`, a "negative dimension" or a many-gigabyte allocation. Each
check appends a message to a list so that one error reports every problem of a config at once.
"""

import math


def check_int(problems: list[str], name: str, value, low: int, high: int | None = None) -> bool:
    """Append a message unless `value` is an integer in [low, high]; return whether it is."""
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{name}={value!r} must be an integer {allowed}")
        return False
    if value < low or (high is not None and value > high):
        problems.append(f"{name}={value} is out of range: allowed {allowed}")
        return False
    return True


def check_float(problems: list[str], name: str, value, low: float, high: float, high_inclusive: bool = True) -> bool:
    """Append a message unless `value` is a finite number with low < value <= high (or < high)."""
    bracket = "]" if high_inclusive else ")"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{name}={value!r} must be a number in ({low}, {high}{bracket}")
        return False
    if not (low < value and (value <= high if high_inclusive else value < high)):
        problems.append(f"{name}={value} is out of range: allowed ({low}, {high}{bracket}")
        return False
    return True


def check_sizes(problems: list[str], name: str, value, length: int, axes: str, upper: tuple[int, ...] | None = None) -> bool:
    """Append a message unless `value` is `length` positive integers (each <= the matching `upper`)."""
    sizes = tuple(value) if isinstance(value, (tuple, list)) else None
    if (
        sizes is None
        or len(sizes) != length
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
    ):
        problems.append(f"{name}={value!r} must be {length} positive integers {axes}")
        return False
    if upper is not None and any(s > u for s, u in zip(sizes, upper)):
        problems.append(f"{name}={sizes} is out of range: each at most {tuple(upper)} {axes}")
        return False
    return True


def halvings_to_one(size: int) -> int:
    """How many stride-2 convolutions bring `size` down to 1: more only add channels, never resolution."""
    return max(0, math.ceil(math.log2(size))) if size > 0 else 0


def raise_if_any(problems: list[str], model: str) -> None:
    if problems:
        raise ValueError(f"Invalid {model} config: " + "; ".join(problems))
