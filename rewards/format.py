"""Format reward for the R1 output layout, and the block extractors the other rewards use.

The layout is ``<think>reasoning</think><answer>final answer</answer>``, optionally surrounded by
whitespace and with whitespace between the two blocks. Chat templates that pre-fill ``<think>`` into the
prompt (a frequent cause of "the format reward is always 0") are handled by ``prefilled_think=True``: the
completion then starts inside the think block and must not open another one.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rewards.base import Reward

_TAG_RE = re.compile(r"</?(?:think|answer)>")
_ANSWER_TAG_RE = re.compile(r"</?answer>")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def format_reward(
    completion: str, sample: Mapping[str, Any] | None = None, *, prefilled_think: bool = False
) -> Reward:
    """1.0 iff ``completion`` is exactly one think block followed by one non-empty answer block.

    Surrounding whitespace and whitespace between the blocks are ignored; any other text outside the
    blocks, and any extra, nested or stray ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` give 0.0.
    An empty think block is accepted (the R1 format reward checks the layout, not the reasoning).

    With ``prefilled_think=True`` the prompt already ends in ``<think>``: the completion must not contain
    ``<think>`` and must read ``reasoning</think><answer>…</answer>``.

    Reasons: ``ok``, ``empty``, ``missing_think``, ``missing_answer`` (a block absent, unclosed, or a
    closing tag without its opening one), ``empty_answer``, ``repeated_tag``, ``nested_tag``,
    ``text_outside_tags``, ``wrong_order``.
    """
    reason = _format_problem(completion, prefilled_think)
    return Reward(1.0 if reason == "ok" else 0.0, reason)


def _format_problem(completion: str, prefilled_think: bool) -> str:
    text = completion.strip()
    if not text:
        return "empty"
    tags = list(_TAG_RE.finditer(text))
    if prefilled_think and any(m.group() == _THINK_OPEN for m in tags):
        return "repeated_tag"  # the prompt already opened the think block

    # Walk the tags once, tracking the block that is open; blocks never nest in this layout.
    open_name: str | None = "think" if prefilled_think else None
    open_tag: re.Match[str] | None = None
    blocks: dict[str, tuple[re.Match[str] | None, re.Match[str]]] = {}
    for tag in tags:
        name = tag.group().strip("</>")
        if not tag.group().startswith("</"):
            if open_name is not None:
                return "nested_tag"
            if name in blocks:
                return "repeated_tag"
            open_name, open_tag = name, tag
        elif open_name == name:
            blocks[name] = (open_tag, tag)
            open_name, open_tag = None, None
        elif name in blocks:
            return "repeated_tag"
        else:
            return f"missing_{name}"  # a closing tag whose opening tag never came
    if open_name is not None:
        return f"missing_{open_name}"  # unclosed, e.g. a truncated completion
    if "think" not in blocks:
        return "missing_think"
    if "answer" not in blocks:
        return "missing_answer"

    think_open, think_close = blocks["think"]
    answer_open, answer_close = blocks["answer"]
    assert answer_open is not None  # only the think block can have a pre-filled opener
    if answer_open.start() < think_close.start():
        return "wrong_order"
    before = text[: think_open.start()] if think_open is not None else ""
    between = text[think_close.end() : answer_open.start()]
    after = text[answer_close.end() :]
    if before.strip() or between.strip() or after.strip():
        return "text_outside_tags"
    if not text[answer_open.end() : answer_close.start()].strip():
        return "empty_answer"
    return "ok"


def extract_answer_block(completion: str) -> str | None:
    """Content of the last well-formed ``<answer>…</answer>`` (stripped), or None if there is none.

    "Well-formed" means an ``<answer>`` with its ``</answer>`` and no other ``<answer>`` between them, so
    for ``<answer><answer>x</answer>`` the block is ``x``. Runs in one pass (safe on megabyte inputs).
    """
    last: tuple[int, int] | None = None
    content_start: int | None = None
    for tag in _ANSWER_TAG_RE.finditer(completion):
        if tag.group() == "<answer>":
            content_start = tag.end()  # the newest opener wins
        elif content_start is not None:
            last = (content_start, tag.start())
            content_start = None
    if last is None:
        return None
    return completion[last[0] : last[1]].strip()


def extract_think_block(completion: str, prefilled_think: bool = False) -> str | None:
    """Content of the first think block (stripped), or None if no complete block exists.

    With ``prefilled_think=True``, or when the completion has a ``</think>`` but no ``<think>`` (a
    template that pre-filled it), the think block is everything before the first ``</think>``.
    """
    if prefilled_think or _THINK_OPEN not in completion:
        close = completion.find(_THINK_CLOSE)
        return None if close == -1 else completion[:close].strip()
    start = completion.find(_THINK_OPEN) + len(_THINK_OPEN)
    close = completion.find(_THINK_CLOSE, start)
    return None if close == -1 else completion[start:close].strip()
