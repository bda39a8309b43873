"""Units: what a quantity's unit means, normalised to exact integers (or Fractions).

Bytes are integers end to end: `3.35 TB/s` is exactly 3_350_000_000_000 B/s. Decimal prefixes
(KB, MB, GB, TB) are powers of 1000, binary ones (KiB .. TiB) powers of 1024, as on datasheets.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

Dimension = Literal["bytes", "bytes_per_s", "flops_per_s", "percent", "tokens_per_s", "seconds",
                    "count", "watts", "joules", "tokens_per_joule"]

_BYTE_PREFIX = {
    "": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_SI = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}

UNITS: dict[str, tuple[Dimension, Fraction]] = {}
for p, m in _BYTE_PREFIX.items():
    UNITS[f"{p}B"] = ("bytes", Fraction(m))
    UNITS[f"{p}B/s"] = ("bytes_per_s", Fraction(m))
for p, m in _SI.items():
    UNITS[f"{p}FLOPS"] = ("flops_per_s", Fraction(m))
    UNITS[f"{p}FLOP/s"] = ("flops_per_s", Fraction(m))
UNITS["%"] = ("percent", Fraction(1))
UNITS["tokens/s"] = ("tokens_per_s", Fraction(1))
UNITS["s"] = ("seconds", Fraction(1))
UNITS["ms"] = ("seconds", Fraction(1, 1000))
UNITS["us"] = ("seconds", Fraction(1, 10**6))
UNITS["W"] = ("watts", Fraction(1))
UNITS["kW"] = ("watts", Fraction(1000))
UNITS["J"] = ("joules", Fraction(1))
UNITS["mJ"] = ("joules", Fraction(1, 1000))
UNITS["tokens/J"] = ("tokens_per_joule", Fraction(1))
# Plain counts may carry a magnitude suffix: `params 30 B` would be ambiguous with bytes,
# so counts use scientific notation (30e9) or these explicit words.
UNITS["K"] = ("count", Fraction(10**3))
UNITS["M"] = ("count", Fraction(10**6))
UNITS["G"] = ("count", Fraction(10**9))

DIMENSION_WORDS: dict[Dimension, str] = {
    "bytes": "a size (e.g. 80 GB, 50 MiB)",
    "bytes_per_s": "a bandwidth (e.g. 3.35 TB/s, 450 GB/s)",
    "flops_per_s": "a compute rate (e.g. 989 TFLOPS)",
    "percent": "a percentage (e.g. 90%)",
    "tokens_per_s": "a throughput (e.g. 12800 tokens/s)",
    "seconds": "a time (e.g. 0.078 ms)",
    "count": "a plain number (e.g. 16)",
    "watts": "a power (e.g. 700 W, 11.2 kW)",
    "joules": "an energy (e.g. 0.9 J, 7 mJ)",
    "tokens_per_joule": "an energy efficiency (e.g. 1.14 tokens/J)",
}


def units_of(dim: Dimension) -> list[str]:
    return sorted(u for u, (d, _) in UNITS.items() if d == dim)


def lookup(unit: str) -> tuple[Dimension, Fraction] | None:
    return UNITS.get(unit)


def human_bytes(n: float | Fraction) -> str:
    """Decimal units, 3 significant digits: 61.0 GB, 537 MB, 12 B."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def human_rate(n: float, unit: str) -> str:
    n = float(n)  # Fraction.__format__ takes no "g" spec before Python 3.12
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 rank`, `2 ranks`, `1 device class`, `3 device classes` (nouns: the irregular plural)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def human_count(n: float) -> str:
    n = float(n)  # a require value is a Fraction: `require devices <= 4` crashed here
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"
