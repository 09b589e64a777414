"""The task registry: task name -> generator.

A generator is ``f(n, *, seed, difficulty=..., split=None, exclude=()) -> list[dict]`` returning ``n``
samples with distinct prompts per tasks/schema.md (see :func:`tasks.sampling.draw_samples`). Add your own
with :func:`register_task`; ``make_splits`` and ``build`` then work for it too.
"""
from __future__ import annotations

from typing import Any, Callable

from .arithmetic import generate_arithmetic
from .code import generate_code
from .countdown import generate_countdown
from .instruction import generate_instruction
from .linear_equation import generate_linear_equation
from .word_problem import generate_word_problem

Generator = Callable[..., list[dict[str, Any]]]

TASKS: dict[str, Generator] = {
    "arithmetic": generate_arithmetic,
    "word_problem": generate_word_problem,
    "countdown": generate_countdown,
    "linear_equation": generate_linear_equation,
    "instruction": generate_instruction,
    "code": generate_code,
}


def get_generator(task: str) -> Generator:
    """The registered generator for ``task``; a ``ValueError`` listing known tasks otherwise."""
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def register_task(name: str, generator: Generator, *, replace: bool = False) -> None:
    """Add ``generator`` under ``name`` (refuses to overwrite an existing task unless ``replace``)."""
    if name in TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered; pass replace=True to override it")
    TASKS[name] = generator
