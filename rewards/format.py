"""Format reward for the R1 output layout (or the think + ``\\boxed{}`` one), and the block extractors the
other rewards use.

The R1 layout (``style="r1"``) is ``<think>reasoning</think><answer>final answer</answer>``, optionally
surrounded by whitespace and with whitespace between the two blocks. The R1-distill / OpenR1 / MATH layout
(``style="think_boxed"``) is ``<think>reasoning</think> answer text with \\boxed{final answer}``. Chat
templates that pre-fill ``<think>`` into the prompt (a frequent cause of "the format reward is always 0")
are handled by ``prefilled_think=True``: the completion then starts inside the think block and must not
open another one.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from rewards.base import Reward
from rewards.boxed import last_boxed

_TAG_RE = re.compile(r"</?(?:think|answer)>")
_ANSWER_TAG_RE = re.compile(r"</?answer>")
_THINK_TAG_RE = re.compile(r"</?think>")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
FORMAT_STYLES: tuple[str, ...] = ("r1", "think_boxed")


def format_reward(
    completion: str,
    sample: Mapping[str, Any] | None = None,
    *,
    prefilled_think: bool = False,
    style: Literal["r1", "think_boxed"] = "r1",
) -> Reward:
    """1.0 iff ``completion`` is exactly one think block followed by one non-empty answer block.

    ``style="think_boxed"`` checks the R1-distill / OpenR1 / MATH layout instead (see
    :func:`think_boxed_problem`): one closed think block, then an answer with a ``\\boxed{…}``.

    Surrounding whitespace and whitespace between the blocks are ignored; any other text outside the
    blocks, and any extra, nested or stray ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` give 0.0.
    An empty think block is accepted (the R1 format reward checks the layout, not the reasoning).

    With ``prefilled_think=True`` the prompt already ends in ``<think>``: the completion must not contain
    ``<think>`` and must read ``reasoning</think><answer>…</answer>``.

    Reasons: ``ok``, ``empty``, ``missing_think``, ``missing_answer`` (a block absent, unclosed, or a
    closing tag without its opening one), ``empty_answer``, ``repeated_tag``, ``nested_tag``,
    ``text_outside_tags``, ``wrong_order``.
    """
    check_format_style(style)
    if style == "think_boxed":
        reason = think_boxed_problem(completion, prefilled_think)
    else:
        reason = _format_problem(completion, prefilled_think)
    return Reward(1.0 if reason == "ok" else 0.0, reason)


def check_format_style(style: str) -> None:
    """Raise ``ValueError`` (one line, the accepted values) unless ``style`` is a known format style."""
    if style not in FORMAT_STYLES:
        raise ValueError(f"style={style!r}: expected one of {', '.join(FORMAT_STYLES)}")


def think_boxed_problem(completion: str, prefilled_think: bool = False) -> str:
    """``"ok"`` iff ``completion`` is one closed think block followed by an answer with a ``\\boxed{…}``;
    else the first problem found.

    Before ``<think>`` only whitespace may come; with ``prefilled_think=True`` the prompt opened the block,
    so the completion must not. The answer (everything after ``</think>``) may hold any text, ``<answer>``
    tags included, as long as a balanced, non-empty box is in it; a box inside the think block does not
    count. Reasons: ``ok``, ``empty``, ``missing_think`` (no think block, unclosed, or a ``</think>``
    without its ``<think>``), ``repeated_tag``, ``text_outside_tags`` (text before ``<think>``),
    ``missing_answer`` (nothing after ``</think>``), ``missing_boxed``, ``empty_answer`` (an empty box).
    """
    text = completion.strip()
    if not text:
        return "empty"
    tags = [m.group() for m in _THINK_TAG_RE.finditer(text)]
    expected = [_THINK_CLOSE] if prefilled_think else [_THINK_OPEN, _THINK_CLOSE]
    if tags != expected:
        if tags.count(_THINK_OPEN) > len(expected) - 1 or tags.count(_THINK_CLOSE) > 1:
            return "repeated_tag"  # with prefilled_think, any <think> repeats the prompt's
        return "missing_think"
    if not prefilled_think and not text.startswith(_THINK_OPEN):
        return "text_outside_tags"
    answer = text[text.index(_THINK_CLOSE) + len(_THINK_CLOSE):]
    if not answer.strip():
        return "missing_answer"
    box = last_boxed(answer)
    if box is None:
        return "missing_boxed"
    return "ok" if box else "empty_answer"


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
