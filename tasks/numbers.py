"""Exact number formatting shared by the generators.

All generator arithmetic is done with ``int`` and ``fractions.Fraction`` so gold answers are exact; these
helpers turn those values into the strings that go into prompts, worked steps and ``answer`` fields, in
forms math-verify parses (``42``, ``-7``, ``3/4``, ``2.5``).
"""
from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction


def is_terminating(value: Fraction) -> bool:
    """True when ``value`` has a finite decimal expansion (its reduced denominator is 2**a * 5**b)."""
    denominator = Fraction(value).denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def format_decimal(value: Fraction) -> str:
    """Exact decimal string without trailing zeros (``Fraction(5, 2)`` -> ``"2.5"``).

    Raises ``ValueError`` for values without a finite decimal expansion (``1/3``).
    """
    value = Fraction(value)
    if not is_terminating(value):
        raise ValueError(f"{value} has no finite decimal expansion")
    # A terminating fraction with denominator up to 10**k needs at most ~k digits after the point; a wide
    # context makes the division exact, and the 'f' format avoids exponent notation such as '1E+2'.
    with localcontext() as ctx:
        ctx.prec = 100
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_number(value: Fraction | int, *, prefer_decimal: bool = False) -> str:
    """Canonical answer string: an integer, else a decimal (when asked and exact), else ``p/q``.

    >>> format_number(Fraction(-6, 8)), format_number(Fraction(5, 2), prefer_decimal=True)
    ('-3/4', '2.5')
    """
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    if prefer_decimal and is_terminating(value):
        return format_decimal(value)
    return f"{value.numerator}/{value.denominator}"


def format_money(value: Fraction | int) -> str:
    """Dollar amount with cents when needed, without the dollar sign (``7`` -> ``"7"``, ``7.5`` -> ``"7.50"``)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    cents = value * 100
    if cents.denominator != 1:
        raise ValueError(f"{value} is not a whole number of cents")
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(int(cents)), 100)
    return f"{sign}{whole}.{rest:02d}"
