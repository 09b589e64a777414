"""Cold-start demonstrations: a sample's worked steps and answer as one chat example in the R1 format.

The assistant turn is exactly ``<think>\\n{steps}\\n</think>\\n<answer>\\n{answer}\\n</answer>``, the format
the regex format reward expects, so cold-start SFT teaches the layout GRPO then rewards.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_r1_response(steps: str, answer: str) -> str:
    """The assistant text: one think block with ``steps``, then one answer block with ``answer``."""
    for name, text in (("steps", steps), ("answer", answer)):
        if any(tag in text for tag in _TAGS):
            raise ValueError(f"{name} must not contain think/answer tags: {text[:80]!r}")
    return f"{THINK_OPEN}\n{steps.strip()}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer.strip()}\n{ANSWER_CLOSE}"


def demonstration_answer(sample: Mapping[str, Any]) -> str:
    """What goes in the answer block: the reference response for instruction and code tasks (for code, the
    reference solution in a fenced python block), else ``answer``."""
    field = "reference_response" if sample.get("verifier") in ("instruction", "code") else "answer"
    value = sample.get(field)
    if value is None or str(value).strip() == "":
        raise ValueError(f"sample {sample.get('id', '?')}: no {field!r} to put in the answer block")
    return str(value)


def make_demonstration(sample: Mapping[str, Any], *, system_prompt: str | None = None) -> dict[str, Any]:
    """A chat example ``{"id", "task", "messages": [user, assistant]}`` built from ``sample``.

    ``system_prompt`` adds a leading system message (the one the RL stage will use, for consistency).
    Raises ``ValueError`` when the sample has no ``solution`` or nothing to answer with.
    """
    steps = sample.get("solution")
    if not steps or not str(steps).strip():
        raise ValueError(f"sample {sample.get('id', '?')}: no 'solution' to put in the think block")
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages += [
        {"role": "user", "content": sample["prompt"]},
        {"role": "assistant", "content": format_r1_response(str(steps), demonstration_answer(sample))},
    ]
    return {"id": sample.get("id"), "task": sample.get("task"), "messages": messages}


def make_demonstrations(
    samples: Iterable[Mapping[str, Any]], *, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """:func:`make_demonstration` for each sample, in order."""
    return [make_demonstration(sample, system_prompt=system_prompt) for sample in samples]
