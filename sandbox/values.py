"""Trusted-side comparison: decode what the sandbox reported and compare it with the expected value.

Everything here runs on the host on plain builtin objects the host built itself, so no ``__eq__`` of the
candidate's is ever called. Equality follows Python's ``==`` on plain values with one strictness added:
a bool equals only a bool (``True`` is not ``1`` here), so a function that should return a count
cannot pass by returning ``True``.
"""
from __future__ import annotations

import math
from typing import Any

_TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset}


class UndecodableValue(ValueError):
    """The report held something that is not a tagged plain value."""


def decode_value(data: Any, depth: int = 0) -> Any:
    """Undo the sandbox's type tagging (see sandbox/inside.py ``tag_value``): JSON -> plain Python."""
    if depth > 100:
        raise UndecodableValue("value nested too deeply")
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode_value(item, depth + 1) for item in data]
    if type(data) is dict and len(data) == 1:
        (tag, body), = data.items()
        try:
            if tag in _TAGS and type(body) is list:
                return _TAGS[tag](decode_value(item, depth + 1) for item in body)
            if tag == "dict" and type(body) is list:
                return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in (_pair(p) for p in body)}
            if tag == "bytes" and type(body) is str:
                return bytes.fromhex(body)
            if tag == "complex" and type(body) is list and len(body) == 2:
                return complex(*(_number(x) for x in body))
        except TypeError as exc:  # an unhashable set element or dict key
            raise UndecodableValue(str(exc)) from None
    raise UndecodableValue(f"not a tagged value: {str(data)[:80]}")


def same_value(actual: Any, expected: Any) -> bool:
    """``actual == expected`` for plain values, recursively, except that bools only equal bools."""
    if type(actual) is bool or type(expected) is bool:
        return type(actual) is type(expected) and actual == expected
    if is_real_number(actual) and is_real_number(expected):
        return actual == expected
    if type(actual) is not type(expected):
        return False
    if type(actual) in (list, tuple):
        return len(actual) == len(expected) and all(same_value(a, e) for a, e in zip(actual, expected))
    if type(actual) is dict:
        return actual.keys() == expected.keys() and all(same_value(actual[k], expected[k]) for k in expected)
    return actual == expected


def close_enough(actual: Any, expected: float, *, rel_tol: float, abs_tol: float) -> bool:
    """``math.isclose`` for a real-number result (a bool is not a number here)."""
    return is_real_number(actual) and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)


def normalise_output(text: str) -> list[str]:
    """Program output as compared: each line's whitespace runs collapsed and ends trimmed, trailing blank
    lines dropped (so ``"1  2 \\n\\n"`` reads as ``["1 2"]``)."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(actual: str, expected: str) -> bool:
    """Whether a program's stdout matches the expected output, line by line after normalising."""
    return normalise_output(actual) == normalise_output(expected)


def _pair(item: Any) -> tuple[Any, Any]:
    if type(item) is not list or len(item) != 2:
        raise UndecodableValue("a dict item must be a [key, value] pair")
    return item[0], item[1]


def _number(value: Any) -> float:
    if not is_real_number(value):
        raise UndecodableValue("complex parts must be numbers")
    return value


def is_real_number(value: Any) -> bool:
    """An int or a float (not a bool, not a subclass)."""
    return type(value) in (int, float)
