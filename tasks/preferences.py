"""Preference pairs for reward-model training: synthetic ones from task samples, or a user's file.

A pair is ``{"id", "task", "prompt_messages", "chosen", "rejected", "kind"}``: two assistant responses to
the same conversation, the first preferred. Synthetic pairs take the R1-format reference demonstration
(:func:`tasks.make_demonstration`) as ``chosen`` and a seeded corruption of it as ``rejected``; ``kind``
says which:

- ``wrong_answer`` (math and countdown samples): one number of the final answer changed (the last
  mention of the answer in the steps too), so the answer still parses but is wrong;
- ``broken_format``: the ``</think>`` tag dropped, the answer outside an ``<answer>`` block, or the
  response cut off inside the think block;
- ``violates_constraints`` (instruction samples): the reference response changed so that it breaks one of
  its constraints (checked with :func:`rewards.instruction.instruction_reward`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from typing import Any, Callable, Iterable, Mapping

from .demonstrations import THINK_CLOSE, THINK_OPEN, ANSWER_CLOSE, ANSWER_OPEN, demonstration_answer, \
    make_demonstration

log = logging.getLogger(__name__)

PAIR_FIELDS = ("id", "task", "prompt_messages", "chosen", "rejected", "kind")
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


def make_preference_pairs(samples: Iterable[Mapping[str, Any]], *, seed: int,
                          system_prompt: str | None = None) -> list[dict[str, Any]]:
    """One synthetic preference pair per sample (see the module doc), deterministic for ``seed``.

    Each pair's corruption depends only on ``seed``, the sample's position and its id. Samples with no
    ``solution`` (no demonstration can be built) are skipped, with one warning giving the count.
    """
    pairs, skipped = [], 0
    for index, sample in enumerate(samples):
        try:
            demo = make_demonstration(sample, system_prompt=system_prompt)
        except (ValueError, KeyError):
            skipped += 1
            continue
        rng = random.Random(f"r1-recipe/preferences/seed={seed}/{index}/{sample.get('id')}")
        chosen = demo["messages"][-1]["content"]
        kind, rejected = _rejected(sample, rng)
        pairs.append({"id": sample.get("id"), "task": sample.get("task"), "prompt_messages": demo["messages"][:-1],
                      "chosen": chosen, "rejected": rejected, "kind": kind})
    if skipped:
        log.warning("make_preference_pairs: %d of %d samples skipped (no solution or nothing to answer with)",
                    skipped, skipped + len(pairs))
    return pairs


def _rejected(sample: Mapping[str, Any], rng: random.Random) -> tuple[str, str]:
    steps, answer = str(sample["solution"]).strip(), demonstration_answer(sample).strip()
    verifier = sample.get("verifier", "accuracy")
    kinds = ["broken_format"]
    if verifier == "instruction":
        kinds.append("violates_constraints")
    elif verifier not in ("code",) and _NUMBER_RE.search(answer):
        kinds.append("wrong_answer")
    kind = rng.choice(kinds)
    if kind == "wrong_answer":
        rejected = _wrong_answer(sample, steps, answer, rng)
        if rejected is not None:
            return kind, rejected
    elif kind == "violates_constraints":
        rejected = _constraint_violation(sample, steps, answer, rng)
        if rejected is not None:
            return kind, rejected
    return "broken_format", _broken_format(steps, answer, rng)


def _r1(steps: str, answer: str) -> str:
    return f"{THINK_OPEN}\n{steps}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"


def _broken_format(steps: str, answer: str, rng: random.Random) -> str:
    variant = rng.choice(("no_think_close", "no_answer_block", "truncated"))
    if variant == "no_think_close":
        return f"{THINK_OPEN}\n{steps}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}"
    if variant == "no_answer_block":
        return f"{THINK_OPEN}\n{steps}\n{THINK_CLOSE}\n{answer}"
    cut = max(1, len(steps) // 2)  # a response that ran out of tokens mid-thought
    return f"{THINK_OPEN}\n{steps[:cut].rstrip()}"


# ---- wrong answers ------------------------------------------------------------------------------------------

def perturb_number(text: str, rng: random.Random) -> str | None:
    """``text`` with its first number changed to a different one (integers by a small step, decimals in the
    last digit), so ``42`` -> ``41``, ``3/4`` -> ``2/4``, ``2.5`` -> ``2.7``; None if it has no number."""
    match = _NUMBER_RE.search(text)
    if match is None:
        return None
    token = match.group()
    if "." in token:
        digit = int(token[-1])
        new = token[:-1] + str((digit + rng.randint(1, 9)) % 10)
    else:
        value, delta = int(token), rng.choice((1, -1, 2, -2, 10, -10))
        new = str(value + delta if value + delta >= 0 else value + abs(delta))
    return text[:match.start()] + new + text[match.end():]


def _wrong_answer(sample: Mapping[str, Any], steps: str, answer: str, rng: random.Random) -> str | None:
    wrong = perturb_number(answer, rng)
    if wrong is None or wrong == answer:
        return None
    # The steps' last mention of the answer says the wrong one too, so the pair differs in correctness,
    # not in whether the steps agree with the answer block.
    mentions = list(re.finditer(rf"(?<![\w.]){re.escape(answer)}(?!\.?\d)", steps))
    if mentions:
        last = mentions[-1]
        steps = steps[:last.start()] + wrong + steps[last.end():]
    rejected = _r1(steps, wrong)
    if sample.get("verifier") == "countdown":  # an expression: make sure it really misses
        from rewards.countdown import countdown_reward

        if countdown_reward(rejected, sample) == 1.0:
            return None
    return rejected


# ---- constraint violations -------------------------------------------------------------------------------

def _remove_words(text: str, words: list[str]) -> str:
    for word in words:
        text = re.sub(rf"(?<!\w){re.escape(word.strip())}(?!\w)", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _json_to_text(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return f"Here it is: {text}"
    parts = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    return " ".join(str(p) for p in parts) or "Nothing to add."


def _targeted(constraint: Mapping[str, Any], response: str) -> str | None:
    """``response`` changed to break this one constraint (None for kinds it does not know)."""
    kind = constraint.get("kind")
    words = constraint.get("words") or []
    words = [words] if isinstance(words, str) else list(words)
    if kind == "max_words":
        n = int(constraint.get("n", 0))
        count = max(1, len(response.split()))
        return " ".join([response] * (math.ceil((n + 1) / count) + 1))
    if kind == "min_words":
        return " ".join(response.split()[:max(1, int(constraint.get("n", 2)) // 3)])
    if kind == "include_keywords":
        return _remove_words(response, words) if words else None
    if kind == "exclude_words":
        return f"{response} Honestly, {words[0]} matters here." if words else None
    if kind == "num_bullets":
        return f"{response}\n- One more point to add."
    if kind == "lowercase":
        return response.upper()
    if kind == "uppercase":
        return response.lower()
    if kind == "start_with":
        return f"Well then. {response}"
    if kind == "end_with":
        return f"{response} Bye for now."
    if kind == "no_commas":
        return f"{response} Also, to be clear, that is it."
    if kind == "num_paragraphs":
        return " ".join(p.strip() for p in re.split(r"\n\s*\n", response) if p.strip())
    if kind == "json":
        return _json_to_text(response)
    return None


_GENERIC: tuple[Callable[[str], str], ...] = (
    str.upper,
    str.lower,
    lambda r: " ".join(r.split()[:max(1, len(r.split()) // 2)]),  # truncated
    lambda r: f"{r}, and so on, and so forth",  # commas appended
    lambda r: " ".join([r] * 3),  # repeated
)


def _constraint_violation(sample: Mapping[str, Any], steps: str, answer: str, rng: random.Random) -> str | None:
    from rewards.instruction import instruction_reward

    constraints = [c for c in sample.get("constraints") or [] if isinstance(c, Mapping)]
    rng.shuffle(constraints)
    generic = list(_GENERIC)
    rng.shuffle(generic)
    candidates = [lambda r, c=c: _targeted(c, r) for c in constraints] + generic
    for corrupt in candidates:
        response = corrupt(answer)
        if not response or not response.strip() or re.search(r"</?(?:think|answer)>", response):
            continue
        rejected = _r1(steps, response.strip())
        if instruction_reward(rejected, sample, all_or_nothing=True).reason != "ok":
            return rejected
    return None


# ---- a user's pairs ----------------------------------------------------------------------------------------

def read_preference_pairs(path: str | os.PathLike, *, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Preference pairs from a ``.jsonl`` / ``.json`` / ``.parquet`` file, as :func:`make_preference_pairs`
    returns them.

    Each row has ``prompt`` (a string, the user's message, or a list of chat messages), ``chosen`` and
    ``rejected`` (strings, or message lists ending with the assistant's turn, whose content is taken; with
    message lists ``prompt`` may be left out and is then ``chosen`` minus its last message). ``id``,
    ``task`` and ``kind`` are kept when present (defaults: ``{stem}-{row:06d}``, the file stem, ``"data"``).
    ``system_prompt`` is put first when the prompt has no system message. A bad row raises a one-line
    ``ValueError`` naming the file and the row, e.g. ``data/p.jsonl: row 3: missing field 'rejected' ...``.
    """
    from .loaders import default_task_name, read_rows

    label, rows = read_rows(path)
    default_task = default_task_name(path)
    pairs = []
    for number, row in enumerate(rows, start=1):
        where = f"{label}: row {number}"
        fields = ", ".join(row) or "(none)"
        for name in ("chosen", "rejected"):
            if row.get(name) is None:
                raise ValueError(f"{where}: missing field {name!r}; row has fields: {fields}")
        chosen, chosen_context = _response(row["chosen"], where, "chosen")
        rejected, _ = _response(row["rejected"], where, "rejected")
        prompt = row.get("prompt")
        if prompt is None:
            if not chosen_context:
                raise ValueError(f"{where}: missing field 'prompt'; row has fields: {fields}")
            messages = chosen_context
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(f"{where}: field 'prompt' is an empty string")
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = _messages(prompt, where, "prompt")
        if system_prompt is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        task = row.get("task") or default_task
        pairs.append({"id": str(row.get("id") or f"{task}-{number - 1:06d}"), "task": task,
                      "prompt_messages": messages, "chosen": chosen, "rejected": rejected,
                      "kind": str(row.get("kind") or "data")})
    return pairs


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: field {field!r} must be a string or a non-empty list of chat messages, "
                         f"got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"{where}: field {field!r} message {i} must have string 'role' and 'content'")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _response(value: Any, where: str, field: str) -> tuple[str, list[dict[str, str]]]:
    """``(text, messages before it)`` of a chosen/rejected field."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: field {field!r} is an empty string")
        return value, []
    messages = _messages(value, where, field)
    last = messages[-1]
    if last["role"] != "assistant" or not last["content"].strip():
        raise ValueError(f"{where}: field {field!r}: the last message must be a non-empty assistant turn")
    return last["content"], messages[:-1]
