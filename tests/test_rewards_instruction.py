"""Instruction constraints of tasks/schema.md, checked on the response text."""
import time

import pytest

from rewards import instruction_reward
from rewards.instruction import response_text


def score(text, *constraints, **options):
    return instruction_reward(f"<think>plan</think><answer>{text}</answer>", {"constraints": list(constraints)}, **options)


@pytest.mark.parametrize(
    "text, constraint, satisfied",
    [
        ("one two three", {"kind": "max_words", "n": 3}, True),
        ("one two three four", {"kind": "max_words", "n": 3}, False),
        ("don't over-count this", {"kind": "max_words", "n": 3}, True),  # contractions and hyphens are one word
        ("one two three", {"kind": "min_words", "n": 3}, True),
        ("one two", {"kind": "min_words", "n": 3}, False),
        ("The Cat sat.", {"kind": "include_keywords", "words": ["cat", "sat"]}, True),
        ("concatenate", {"kind": "include_keywords", "words": ["cat"]}, False),  # whole words only
        ("a red fox", {"kind": "include_keywords", "words": ["red", "blue"]}, False),
        ("a red fox", {"kind": "exclude_words", "words": ["blue"]}, True),
        ("a RED fox", {"kind": "exclude_words", "words": ["red"]}, False),
        ("- a\n- b\n* c", {"kind": "num_bullets", "n": 3}, True),
        ("- a\n  - nested\ntext - not a bullet", {"kind": "num_bullets", "n": 2}, True),
        ("- a\n-b", {"kind": "num_bullets", "n": 2}, False),  # "-b" has no space
        ("all lower, 123.", {"kind": "lowercase"}, True),
        ("Not lower", {"kind": "lowercase"}, False),
        ("ALL UPPER 42", {"kind": "uppercase"}, True),
        ("ALMOST uPPER", {"kind": "uppercase"}, False),
        ("Dear Sir, hello", {"kind": "start_with", "text": "Dear Sir"}, True),
        ("Hello Dear Sir", {"kind": "start_with", "text": "Dear Sir"}, False),
        ("... Any other questions?", {"kind": "end_with", "text": "Any other questions?"}, True),
        ("Any other questions? No.", {"kind": "end_with", "text": "Any other questions?"}, False),
        ("no commas here.", {"kind": "no_commas"}, True),
        ("one, two", {"kind": "no_commas"}, False),
        ("一，二", {"kind": "no_commas"}, False),  # full-width comma
        ("p1\n\np2\n \np3", {"kind": "num_paragraphs", "n": 3}, True),
        ("p1\np2", {"kind": "num_paragraphs", "n": 2}, False),
        ('{"a": [1, 2]}', {"kind": "json"}, True),
        ('```json\n{"a": 1}\n```', {"kind": "json"}, True),
        ("{'a': 1}", {"kind": "json"}, False),
        ("[" * 100_000 + "]" * 100_000, {"kind": "json"}, False),  # too deep for json: no crash
    ],
)
def test_each_constraint_kind(text, constraint, satisfied):
    r = score(text, constraint)
    assert float(r) == (1.0 if satisfied else 0.0)
    assert r.reason == ("ok" if satisfied else f"failed:{constraint['kind']}")


def test_fraction_and_first_failure():
    constraints = [
        {"kind": "lowercase"},
        {"kind": "max_words", "n": 2},
        {"kind": "no_commas"},
        {"kind": "include_keywords", "words": ["fox"]},
    ]
    r = score("a quick, brown fox", *constraints)
    assert float(r) == 0.5 and r.reason == "failed:max_words"
    strict = score("a quick, brown fox", *constraints, all_or_nothing=True)
    assert float(strict) == 0.0 and strict.reason == "failed:max_words"
    assert score("a fox", *constraints, all_or_nothing=True) == 1.0


def test_unknown_and_invalid_constraints_count_as_unsatisfied():
    r = score("hello", {"kind": "rhymes"}, {"kind": "lowercase"})
    assert float(r) == 0.5 and r.reason == "unknown_constraint:rhymes"
    for bad in [
        {"kind": "max_words"},
        {"kind": "max_words", "n": "ten"},
        {"kind": "max_words", "n": True},
        {"kind": "max_words", "n": -1},
        {"kind": "include_keywords", "words": [3]},
        {"kind": "start_with", "text": ""},
    ]:
        r = score("hello", bad)
        assert float(r) == 0.0 and r.reason == f"invalid_constraint:{bad['kind']}", bad
    assert score("hello", "lowercase").reason == "invalid_constraint:?"
    assert score("hello", {"n": 3}).reason == "invalid_constraint:?"


def test_missing_constraints_and_empty_response():
    assert instruction_reward("<answer>hi</answer>", {}).reason == "no_constraints"
    assert instruction_reward("<answer>hi</answer>", {"constraints": []}).reason == "no_constraints"
    # An empty answer would satisfy max_words, lowercase, no_commas...: it earns nothing instead.
    r = score("  ", {"kind": "max_words", "n": 5}, {"kind": "lowercase"})
    assert (float(r), r.reason) == (0.0, "empty_response")


def test_response_text_selection():
    assert response_text("<think>THINK, A LOT</think><answer> the answer </answer>") == "the answer"
    assert response_text("<think>Thinking, Loud</think>\nplain reply") == "plain reply"
    assert response_text("prefilled thoughts</think> reply") == "reply"
    assert response_text("  no tags at all ") == "no tags at all"
    # The think block's commas and capitals do not count against the answer.
    completion = "<think>Okay, Let Me Think</think><answer>fine</answer>"
    assert instruction_reward(completion, {"constraints": [{"kind": "no_commas"}, {"kind": "lowercase"}]}) == 1.0


def test_megabyte_response_is_checked_quickly():
    text = "word, " * 170_000
    start = time.perf_counter()
    r = score(
        text,
        {"kind": "max_words", "n": 10},
        {"kind": "include_keywords", "words": ["missing"]},
        {"kind": "num_paragraphs", "n": 1},
        {"kind": "json"},
        {"kind": "num_bullets", "n": 0},
    )
    assert time.perf_counter() - start < 2.0
    assert float(r) == pytest.approx(2 / 5) and r.reason == "failed:max_words"
