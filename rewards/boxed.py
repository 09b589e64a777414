"""The last ``\\boxed{…}`` of a text: where MATH-style answers and R1-distill models put the final answer."""
from __future__ import annotations

import re

# Tokens of a left-to-right brace scan: a box opener, an escaped brace (not structural), a brace.
_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")


def last_boxed(text: str) -> str | None:
    """The content (stripped) of the last balanced ``\\boxed{…}`` (or ``\\fbox{…}``) in ``text``, else None.

    One left-to-right scan; escaped braces ``\\{`` ``\\}`` are content, not structure. "Last" is the box
    that closes last, so a box nested in another yields the outer one, and ``\\boxed{\\frac{1}{2}}`` gives
    ``\\frac{1}{2}``. An unbalanced ``\\boxed{12`` is no box.
    """
    stack: list[int | None] = []  # for each open brace: content start if it opened a box, else None
    last: tuple[int, int] | None = None
    for token in _BRACE_TOKEN_RE.finditer(text):
        tok = token.group()
        if len(tok) > 2:  # "\boxed{" / "\fbox{" (escaped braces and braces are 1-2 characters)
            stack.append(token.end())
        elif tok == "{":
            stack.append(None)
        elif tok == "}":
            if not stack:
                continue  # a stray closer cannot end a box
            start = stack.pop()
            if start is not None:
                last = (start, token.start())
    if last is None:
        return None
    return text[last[0]:last[1]].strip()


def final_answer_text(text: str) -> str:
    """The content of the last balanced box in ``text`` (see :func:`last_boxed`), else ``text`` stripped."""
    box = last_boxed(text)
    return text.strip() if box is None else box
