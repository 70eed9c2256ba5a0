"""Exact, order-independent sums of floats as fixed-point integers.

Every finite float is an integer multiple of ``2**-1074`` (the smallest
subnormal), so ``x * 2**1074`` is an exact Python ``int``. Summing those ints
is exact: adding then subtracting a term restores the sum bit for bit, and
merging partial sums in any order gives the same total. Means are then
correctly rounded by one integer true division.

"""

from __future__ import annotations

__all__ = ["SCALE_BITS", "decode", "encode", "fixed", "fixed_mean", "fsum_of"]

#: A float ``x`` is represented by the integer ``x * 2**SCALE_BITS``.
SCALE_BITS = 1074


def fixed(x: float) -> int:
    """The exact fixed-point integer ``x * 2**SCALE_BITS`` of a finite float.

    Raises
    ------
    ValueError
        If ``x`` is NaN.
    OverflowError
        If ``x`` is infinite.

    Examples
    --------
    >>> fixed(0.5) == 1 << (SCALE_BITS - 1)
    True
    >>> fixed(0.1) + fixed(0.2) - fixed(0.1) == fixed(0.2)
    True

    """
    n, d = float(x).as_integer_ratio()
    # d is a power of two 2**k with k <= SCALE_BITS
    return n << (SCALE_BITS + 1 - d.bit_length())


def fixed_mean(total: int, n: int) -> float:
    """Correctly rounded ``total / n`` of a fixed-point sum, as a float.

    Examples
    --------
    >>> fixed_mean(fixed(1e100) + fixed(1.0) + fixed(-1e100), 2)
    0.5

    """
    return total / (n << SCALE_BITS)


def encode(total: int) -> str:
    """Compact exact text form ``"<hex mantissa>p<binary exponent>"`` (JSON-safe).

    Examples
    --------
    >>> encode(fixed(3.0)), encode(fixed(-0.375)), encode(0)
    ('3p0', '-3p-3', '0')
    >>> decode(encode(fixed(0.1) + fixed(1e-300))) == fixed(0.1) + fixed(1e-300)
    True

    """
    if not total:
        return "0"
    tz = (total & -total).bit_length() - 1
    return f"{total >> tz:x}p{tz - SCALE_BITS}"


def decode(text: str) -> int:
    """Inverse of :func:`encode`."""
    if text == "0":
        return 0
    mantissa, _, exponent = text.partition("p")
    shift = int(exponent) + SCALE_BITS
    if shift < 0:
        raise ValueError(f"not an exact sum: {text!r}")
    return int(mantissa, 16) << shift


def fsum_of(total: int) -> float:
    """The float nearest to the fixed-point sum ``total``.

    Examples
    --------
    >>> fsum_of(fixed(1e100) + fixed(1.0) - fixed(1e100))
    1.0

    """
    return total / (1 << SCALE_BITS) if total else 0.0

