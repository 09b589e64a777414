"""Load-time checks of reward option values that a signature alone cannot catch.

Binding a config's options to a reward's signature catches unknown names; a ``Literal``-typed keyword
(``answer_format: Literal["tags", "boxed", ...]``) also says which values are allowed, so a typo such as
``answer_format: boxd`` fails when the config loads, in one line, not on the first scored completion.
"""
from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal


def check_option_values(label: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the reward, the option, the value and the accepted values when an option
    of ``fn`` annotated with ``Literal[...]`` is given a value outside it. Other options are not checked;
    functions whose annotations cannot be resolved are skipped (their own code checks at call time)."""
    if not options:
        return
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references, C callables, objects without annotations
        return
    for name, value in options.items():
        allowed = literal_values(hints.get(name))
        if allowed is not None and not any(value == a and type(value) is type(a) for a in allowed):
            accepted = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"reward {label!r}: option {name}={value!r} is not one of {accepted}")


def literal_values(hint: Any) -> tuple | None:
    """The values a ``Literal[...]`` annotation allows (also inside ``Optional`` / a union), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        values: list = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                values.append(None)
                continue
            inner = literal_values(arg)
            if inner is None:
                return None  # the union admits a non-literal type: any value of it may be fine
            values.extend(inner)
        return tuple(values)
    return None
