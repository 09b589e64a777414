"""Instruction-following prompts with checkable constraints (IFEval-style), and a response that meets them.

A sample states every constraint in plain English in its prompt and lists it machine-readably in
``constraints`` (kinds per tasks/schema.md). The generator writes ``reference_response`` first and then
sets the numeric limits around it with a margin, so the reference satisfies its constraints under any
reasonable reading (whitespace or regex word counts, case-sensitive or not, substring or whole-word).
``solution`` is a short plan saying how each constraint is met; there is no ``answer``.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any, Iterable

from . import vocabulary as vocab
from .sampling import check_difficulty, draw_samples

LEVELS = (1, 2, 3)
DEFAULT_DIFFICULTY = 2

# kind -> lowest difficulty that uses it
KIND_LEVELS = {
    "max_words": 1, "include_keywords": 1, "end_with": 1, "start_with": 1, "lowercase": 1, "no_commas": 1,
    "min_words": 2, "exclude_words": 2, "num_bullets": 2, "uppercase": 2,
    "num_paragraphs": 3, "json": 3,
}
# Pairs that cannot hold together (or that would make the layout ambiguous to check).
CONFLICTS = {
    ("lowercase", "uppercase"),
    ("num_bullets", "num_paragraphs"), ("num_bullets", "json"), ("num_paragraphs", "json"),
    ("json", "start_with"), ("json", "end_with"),
}
# How many constraints a prompt carries at each difficulty (inclusive range).
CONSTRAINT_COUNTS = {1: (1, 2), 2: (2, 3), 3: (3, 5)}


def generate_instruction(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct instruction prompts with ``constraints``, ``reference_response`` and a plan."""
    check_difficulty("instruction", difficulty, LEVELS)
    return draw_samples(
        "instruction", make_instruction, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude
    )


def make_instruction(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One prompt: pick compatible constraint kinds, write a response that meets them, then set limits."""
    topic = rng.choice(sorted(vocab.TOPICS))
    kinds = _pick_kinds(rng, difficulty)
    case = "lowercase" if "lowercase" in kinds else "uppercase" if "uppercase" in kinds else None
    params: dict[str, dict[str, Any]] = {}
    if "include_keywords" in kinds:
        params["include_keywords"] = {"words": rng.sample(vocab.TOPICS[topic], rng.randint(1, 2))}
    if "start_with" in kinds:
        params["start_with"] = {"text": rng.choice(vocab.OPENERS)}
    if "end_with" in kinds:
        params["end_with"] = {"text": rng.choice(vocab.CLOSERS)}
    if "num_bullets" in kinds:
        params["num_bullets"] = {"n": rng.randint(2, 5)}
    if "num_paragraphs" in kinds:
        params["num_paragraphs"] = {"n": rng.randint(2, 3)}

    response = _write_response(rng, topic, kinds, params)
    if case is not None:
        response = _cased(response, case)
        for name in ("start_with", "end_with"):
            if name in params:
                params[name] = {"text": _cased(params[name]["text"], case)}
        if "include_keywords" in params:
            params["include_keywords"] = {"words": [_cased(w, case) for w in params["include_keywords"]["words"]]}

    counts = word_counts(response)
    if "max_words" in kinds:
        # Round up past the longest count plus some slack, to a multiple of 5 (limits people would write).
        params["max_words"] = {"n": (max(counts) + rng.randint(0, 6)) // 5 * 5 + 5}
    if "min_words" in kinds:
        params["min_words"] = {"n": max(5, (min(counts) - rng.randint(0, 6)) // 5 * 5)}
    if "exclude_words" in kinds:
        allowed = [w for w in vocab.FORBIDDABLE_WORDS if w not in response.casefold()]
        params["exclude_words"] = {"words": rng.sample(allowed, min(len(allowed), rng.randint(1, 2)))}

    constraints = [{"kind": kind, **params.get(kind, {})} for kind in kinds]
    stem = rng.choice(vocab.INSTRUCTION_STEMS).format(topic=topic)
    prompt = " ".join([stem] + [describe_constraint(c) for c in constraints])
    return {
        "prompt": prompt,
        "verifier": "instruction",
        "solution": _plan(topic, constraints, response),
        "constraints": constraints,
        "reference_response": response,
    }


def _pick_kinds(rng: random.Random, difficulty: int) -> list[str]:
    available = [kind for kind, lowest in KIND_LEVELS.items() if lowest <= difficulty]
    rng.shuffle(available)
    wanted = rng.randint(*CONSTRAINT_COUNTS[difficulty])
    chosen: list[str] = []
    for kind in available:
        if len(chosen) == wanted:
            break
        if not any((kind, other) in CONFLICTS or (other, kind) in CONFLICTS for other in chosen):
            chosen.append(kind)
    return chosen


def _cased(text: str, case: str) -> str:
    return text.lower() if case == "lowercase" else text.upper()


def word_counts(text: str) -> tuple[int, int]:
    """The text's length by whitespace split and by runs of letters/digits (they differ on '- ' and JSON)."""
    return len(text.split()), len(re.findall(r"[A-Za-z0-9]+", text))


def _write_response(rng: random.Random, topic: str, kinds: list[str], params: dict[str, dict]) -> str:
    sentences = [rng.choice(vocab.OPENING_SENTENCES).format(topic=topic)]
    templates = rng.sample(vocab.KEYWORD_SENTENCES, len(vocab.KEYWORD_SENTENCES))
    for template, word in zip(templates, params.get("include_keywords", {}).get("words", [])):
        sentences.append(template.format(word=word))
    blocks = params.get("num_bullets", params.get("num_paragraphs", {})).get("n", 1)
    fillers = rng.sample(vocab.FILLER_SENTENCES, max(rng.randint(1, 3), blocks + 1 - len(sentences)))
    sentences += fillers
    groups = _split_into(rng, sentences, blocks)

    opener = params.get("start_with", {}).get("text")
    closer = params.get("end_with", {}).get("text")
    if "num_bullets" in kinds:
        # The opener and closer get lines of their own so they never start with "- " nor break a bullet.
        lines = [f"- {' '.join(group)}" for group in groups]
        return "\n".join(([opener] if opener else []) + lines + ([closer] if closer else []))
    paragraphs = [" ".join(group) for group in groups]
    if opener:
        paragraphs[0] = f"{opener} {paragraphs[0]}"
    if closer:
        paragraphs[-1] = f"{paragraphs[-1]} {closer}"
    if "json" in kinds:
        return json.dumps({"note": " ".join(paragraphs)})
    return "\n\n".join(paragraphs)


def _split_into(rng: random.Random, items: list[str], parts: int) -> list[list[str]]:
    """``items`` cut into ``parts`` non-empty runs, in order."""
    cuts = sorted(rng.sample(range(1, len(items)), parts - 1))
    bounds = [0] + cuts + [len(items)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def _quoted_list(words: list[str], joiner: str) -> str:
    quoted = [f"'{w}'" for w in words]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {joiner} {quoted[-1]}"


def _ending(text: str) -> str:
    """Sentence end after a quoted text: none when the quote already ends in punctuation."""
    return "" if text[-1:] in ".!?" else "."


def describe_constraint(constraint: dict[str, Any]) -> str:
    """The plain-English instruction for one constraint, as it appears in prompts."""
    kind = constraint["kind"]
    if kind == "max_words":
        return f"Use at most {constraint['n']} words."
    if kind == "min_words":
        return f"Use at least {constraint['n']} words."
    if kind == "include_keywords":
        words = constraint["words"]
        return f"Include the word{'s' if len(words) > 1 else ''} {_quoted_list(words, 'and')}."
    if kind == "exclude_words":
        words = constraint["words"]
        return f"Do not use the word{'s' if len(words) > 1 else ''} {_quoted_list(words, 'or')}."
    if kind == "num_bullets":
        return f"Format the response as exactly {constraint['n']} bullet points: lines that start with '- '."
    if kind == "lowercase":
        return "Write the whole response in lowercase letters only."
    if kind == "uppercase":
        return "Write the whole response in capital letters only."
    if kind == "start_with":
        return f"Start the response with '{constraint['text']}'{_ending(constraint['text'])}"
    if kind == "end_with":
        return f"End the response with '{constraint['text']}'{_ending(constraint['text'])}"
    if kind == "no_commas":
        return "Do not use any commas."
    if kind == "num_paragraphs":
        return f"Write exactly {constraint['n']} paragraphs separated by a blank line."
    if kind == "json":
        return "Format the entire response as a valid JSON object."
    raise ValueError(f"unknown constraint kind {kind!r}")


def _plan(topic: str, constraints: list[dict[str, Any]], response: str) -> str:
    words = word_counts(response)[0]
    lines = [f"The task is to write about {topic}. Plan:"]
    for c in constraints:
        kind = c["kind"]
        if kind == "max_words":
            lines.append(f"- At most {c['n']} words: keep it short. The draft below has {words} words.")
        elif kind == "min_words":
            lines.append(f"- At least {c['n']} words: add enough detail. The draft below has {words} words.")
        elif kind == "include_keywords":
            lines.append(f"- Work {_quoted_list(c['words'], 'and')} into the sentences.")
        elif kind == "exclude_words":
            lines.append(f"- Avoid {_quoted_list(c['words'], 'and')} entirely.")
        elif kind == "num_bullets":
            lines.append(f"- Put the content in {c['n']} lines that each start with '- '.")
        elif kind == "lowercase":
            lines.append("- Write every letter in lowercase.")
        elif kind == "uppercase":
            lines.append("- Write every letter in capitals.")
        elif kind == "start_with":
            lines.append(f"- Open with '{c['text']}'{_ending(c['text'])}")
        elif kind == "end_with":
            lines.append(f"- Finish with '{c['text']}' and nothing after it.")
        elif kind == "no_commas":
            lines.append("- Use short sentences with no commas.")
        elif kind == "num_paragraphs":
            lines.append(f"- Write {c['n']} paragraphs with a blank line between them.")
        elif kind == "json":
            lines.append('- Put the whole text in a JSON object with a single key "note".')
    lines.append("Every constraint is met by the response below.")
    return "\n".join(lines)
