"""Code correctness reward: run the answer's Python against the sample's tests in the sandbox."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rewards.base import Reward
from rewards.format import extract_answer_block
from sandbox import SandboxConfig, run_tests

# A fenced block: an opening fence with an optional language word, the body, a closing fence on its own line.
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})
DEFAULT_MAX_CODE_CHARS = 100_000


def extract_code(completion: str) -> str | None:
    """The last fenced Python block (```python, ```py or a bare ```) of the ``<answer>`` block, or of the
    whole completion when it has no answer block; None when there is none (or it is empty)."""
    block = extract_answer_block(completion)
    text = completion if block is None else block
    bodies = [m.group(2) for m in _FENCE_RE.finditer(text) if m.group(1).lower() in _PYTHON_TAGS]
    return bodies[-1] if bodies and bodies[-1].strip() else None


def code_reward(
    completion: str,
    sample: Mapping[str, Any],
    *,
    all_or_nothing: bool = False,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    isolation: str = "bwrap",
    max_code_chars: int = DEFAULT_MAX_CODE_CHARS,
) -> Reward:
    """The fraction of ``sample["tests"]`` the answer's code passes (1.0 or 0.0 with ``all_or_nothing``).

    The code is :func:`extract_code` of the completion; it runs in :mod:`sandbox` (bubblewrap, kernel
    limits) with ``timeout_s`` per program run or per call and ``memory_mb`` of address space, and every
    verdict is decided outside the sandbox. ``sample["test_setup"]`` (optional) runs after the code and
    before call tests (e.g. MBPP's imports). ``isolation="rlimits-only"`` runs without bubblewrap (weaker,
    see docs/sandbox.md); when bubblewrap is required but missing this raises ``SandboxUnavailable``.

    Reasons: ``ok``, ``no_code``, ``code_too_long``, ``invalid_tests`` (the sample's tests are malformed),
    else the most telling failure among the tests: ``compile_error``, ``memory``, ``timeout``,
    ``output_limit``, ``runtime_error``, ``exited_early``, ``unserializable`` (a result that is not a plain
    value, e.g. an object with a custom ``__eq__``), ``wrong_answer``.
    """
    code = extract_code(completion)
    if code is None:
        return Reward(0.0, "no_code")
    if len(code) > max_code_chars:
        return Reward(0.0, "code_too_long")
    config = SandboxConfig(isolation=isolation, timeout_s=timeout_s, memory_mb=memory_mb)
    try:
        report = run_tests(code, sample.get("tests"), setup=sample.get("test_setup") or "", config=config,
                           stop_at_first_failure=all_or_nothing)
    except ValueError:  # malformed (or missing) tests in the data: the answer cannot be judged
        return Reward(0.0, "invalid_tests")
    if report.all_passed:
        return Reward(1.0, "ok")
    return Reward(0.0 if all_or_nothing else report.fraction, report.status)
