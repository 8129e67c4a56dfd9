"""Parse the budgets ``deltatune auto`` accepts: wall-clock time and memory."""

from __future__ import annotations

import re

from deltatune.errors import DeltatuneError

_TIME_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_MEMORY_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)", re.IGNORECASE)


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as ``"90s"``, ``"20m"``, ``"1.5h"`` or ``"1h30m"``.

    A bare number is seconds.

    Returns:
        float seconds, > 0.

    Raises:
        DeltatuneError: an unparsable or non-positive duration.
    """
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos or (not m.group(2) and m.end() != len(s)):
                break
            seconds += float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]
            pos = m.end()
        if not s or pos != len(s):
            raise DeltatuneError(f"cannot read the duration '{text}'; write e.g. 90s, 20m, 1.5h or 1h30m")
    if seconds <= 0:
        raise DeltatuneError(f"the duration '{text}' must be positive")
    return seconds


def parse_memory(text: str | int) -> int:
    """Bytes in a memory size such as ``"8GB"`` (10^9), ``"8GiB"`` or ``"8G"`` (2^30), ``"512MB"``.

    A bare number is bytes; single-letter units (K, M, G, T) are binary, as in ``ulimit``.

    Raises:
        DeltatuneError: an unparsable or non-positive size.
    """
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _MEMORY_UNITS:
            raise DeltatuneError(f"cannot read the memory size '{text}'; write e.g. 8GB, 8GiB or 512MB")
        n = int(float(m.group(1)) * _MEMORY_UNITS[m.group(2).lower()])
    if n <= 0:
        raise DeltatuneError(f"the memory size '{text}' must be positive")
    return n


def format_seconds(seconds: float) -> str:
    """``75.3`` → ``"1m15s"``; under a minute ``"12.3s"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_bytes(n: float) -> str:
    """Binary units: ``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover
