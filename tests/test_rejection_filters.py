"""Rejection-sampling filters (stage 3): CoT filters, dedupe, per-prompt cap, data mix, statistics."""
import random
from collections import Counter

import pytest

from stages.rejection_filters import (
    COT_REJECTION_REASONS,
    FilterSettings,
    acceptance_stats,
    cot_rejection_reason,
    mix_non_reasoning,
    normalize_for_dedup,
    repeated_ngram_fraction,
    select_completions,
)
from tasks.demonstrations import format_r1_response

SETTINGS = FilterSettings()
MATH = {"id": "arithmetic-000001", "task": "arithmetic", "verifier": "accuracy", "answer": "7"}
CODE = {"id": "code-000001", "task": "code", "verifier": "code"}
CLEAN_STEPS = "First add three and four.\n\nThat gives seven, which is the total."
CLEAN = format_r1_response(CLEAN_STEPS, "7")


def r1(steps, answer="7"):
    return format_r1_response(steps, answer)


def candidate(sample, completion=CLEAN, correct=True, reason="ok"):
    return {"sample": sample, "completion": completion, "correct": correct, "reason": reason}


def varied_text(n_items):
    """A paragraph without repeated 4-grams, about 16 characters per item."""
    return " ".join(f"add item {i} now" for i in range(n_items))


def prompt(i, task="arithmetic"):
    return {"id": f"{task}-{i:06d}", "task": task, "verifier": "accuracy"}


# --- cot_rejection_reason -----------------------------------------------------------------------------


def test_clean_completion_passes():
    assert cot_rejection_reason(CLEAN, MATH, SETTINGS) is None


def test_symbols_only_cot_is_not_mixed_language():
    # Arithmetic solutions are often just equations: no words at all is not "mixed".
    assert cot_rejection_reason(r1("3 + 4 = 7"), MATH, SETTINGS) is None


@pytest.mark.parametrize(
    "completion, sample, reason",
    [
        ("The answer is 7.", MATH, "bad_format"),
        ("<think>add</think>", MATH, "bad_format"),
        (r1("First add 三 and 四, that gives seven."), MATH, "mixed_language"),
        (r1("First add the numbers.\n\n" + varied_text(100)), MATH, "overlong_paragraph"),
        (r1("so the answer is " * 30), MATH, "repetition"),
        (r1("Compute it:\n```python\nprint(3 + 4)\n```\nThat prints seven."), MATH, "code_block"),
        (r1("Adding gives seven."), {**MATH, "language": "zh"}, "mixed_language"),
    ],
)
def test_each_reason_is_triggered(completion, sample, reason):
    assert reason in COT_REJECTION_REASONS
    assert cot_rejection_reason(completion, sample, SETTINGS) == reason


def test_code_fences_allowed_for_code_verifier_and_by_setting():
    completion = r1("Write a function that adds them.", "```python\ndef add(a, b):\n    return a + b\n```")
    assert cot_rejection_reason(completion, MATH, SETTINGS) == "code_block"
    assert cot_rejection_reason(completion, CODE, SETTINGS) is None
    assert cot_rejection_reason(completion, MATH, FilterSettings(allow_code_blocks=True)) is None


def test_thresholds_are_settings():
    mixed = r1("First add the numbers, that gives seven 七.")  # 7 of 8 words in English
    assert cot_rejection_reason(mixed, MATH, SETTINGS) == "mixed_language"
    assert cot_rejection_reason(mixed, MATH, FilterSettings(min_language_consistency=0.8)) is None
    long_paragraph = r1(varied_text(10))
    assert cot_rejection_reason(long_paragraph, MATH, SETTINGS) is None
    assert cot_rejection_reason(long_paragraph, MATH, FilterSettings(max_paragraph_chars=100)) == (
        "overlong_paragraph"
    )


def test_paragraphs_are_split_at_blank_lines_only():
    many_short = r1("\n\n".join(["Add the next number to the total."] * 60))
    one_long = r1("\n".join(f"Add number {i} to the total." for i in range(60)))
    assert cot_rejection_reason(many_short, MATH, FilterSettings(max_repeated_ngram_fraction=1.0)) is None
    assert cot_rejection_reason(one_long, MATH, SETTINGS) == "overlong_paragraph"


def test_prefilled_think():
    prefilled = CLEAN.removeprefix("<think>")
    assert cot_rejection_reason(prefilled, MATH, SETTINGS, prefilled_think=True) is None
    # The template opened the think block: opening it again is a format error...
    assert cot_rejection_reason(CLEAN, MATH, SETTINGS, prefilled_think=True) == "bad_format"
    # ...and without the flag a completion missing its opener is one too.
    assert cot_rejection_reason(prefilled, MATH, SETTINGS) == "bad_format"
    # The CoT filters read the prefilled think block.
    mixed = r1("First add 三 and 四.").removeprefix("<think>")
    assert cot_rejection_reason(mixed, MATH, SETTINGS, prefilled_think=True) == "mixed_language"


def test_format_not_required_filters_the_whole_text():
    relaxed = FilterSettings(require_format=False)
    assert cot_rejection_reason("First add three and four: seven.", MATH, relaxed) is None
    assert cot_rejection_reason("First add 三 and 四.", MATH, relaxed) == "mixed_language"


def test_unknown_language_is_a_data_error():
    with pytest.raises(ValueError, match="unknown_language:xx"):
        cot_rejection_reason(CLEAN, {**MATH, "language": "xx"}, SETTINGS)


# --- repeated_ngram_fraction --------------------------------------------------------------------------


def test_repetition_fraction_loop_vs_normal_text():
    loop = "so the answer is " * 50
    normal = "We add three and four to get seven, then check by subtracting four from seven again."
    assert repeated_ngram_fraction(loop, 4) > 0.9
    assert repeated_ngram_fraction(normal, 4) == 0.0


def test_repetition_fraction_counts_repeats_of_earlier_ngrams():
    # 4-grams of "a b c d a b c d": abcd bcda cdab dabc abcd -> 1 repeat of 5
    assert repeated_ngram_fraction("a b c d a b c d", 4) == pytest.approx(1 / 5)
    assert repeated_ngram_fraction("A b C d a B c D", 4) == pytest.approx(1 / 5)  # case-insensitive


def test_repetition_fraction_short_text_is_zero():
    assert repeated_ngram_fraction("", 4) == 0.0
    assert repeated_ngram_fraction("a a a", 4) == 0.0
    assert repeated_ngram_fraction("a a a a", 4) == 0.0
    with pytest.raises(ValueError):
        repeated_ngram_fraction("a a", 0)


# --- dedupe and cap -----------------------------------------------------------------------------------


def test_normalize_for_dedup():
    assert normalize_for_dedup("  <think>\nAdd  Them\n</think>\t") == "<think> add them </think>"


def test_dedupe_across_whitespace_and_case_variants():
    variant = CLEAN.replace("\n\n", "\n \n").replace("First", "FIRST").replace(" ", "  ")
    other_prompt = {**MATH, "id": "arithmetic-000002"}
    kept, rejected = select_completions(
        [candidate(MATH), candidate(MATH, variant), candidate(other_prompt, variant)], SETTINGS
    )
    assert [k["sample"]["id"] for k in kept] == [MATH["id"], other_prompt["id"]]  # dedupe is per prompt
    assert rejected == Counter(duplicate=1)


def test_cap_per_prompt_keeps_the_first():
    completions = [r1(f"Add the numbers, attempt {word}.") for word in ("one", "two", "three", "four")]
    other = {**MATH, "id": "arithmetic-000002"}
    cands = [candidate(MATH, c) for c in completions] + [candidate(other, completions[0])]
    kept, rejected = select_completions(cands, SETTINGS)
    assert kept == [cands[0], cands[1], cands[4]]
    assert kept[0] is cands[0]  # the same dicts come back
    assert rejected == Counter(over_cap=2)
    kept, rejected = select_completions(cands, FilterSettings(max_per_prompt=3))
    assert len(kept) == 4 and rejected == Counter(over_cap=1)


def test_select_counts_incorrect_and_cot_reasons():
    cands = [
        candidate(MATH, CLEAN, correct=False, reason="wrong_answer"),
        candidate(MATH, "no tags at all"),
        candidate(MATH, r1("so the answer is " * 30)),
        candidate(MATH, CLEAN),
    ]
    kept, rejected = select_completions(cands, SETTINGS)
    assert kept == [cands[3]]
    assert rejected == Counter(incorrect=1, bad_format=1, repetition=1)


def test_select_prefilled_think():
    prefilled = CLEAN.removeprefix("<think>")
    kept, rejected = select_completions([candidate(MATH, prefilled)], SETTINGS, prefilled_think=True)
    assert len(kept) == 1 and not rejected
    kept, rejected = select_completions([candidate(MATH, prefilled)], SETTINGS)
    assert not kept and rejected == Counter(bad_format=1)


def test_every_candidate_is_kept_or_counted_once():
    rng = random.Random(0)
    pool = [
        CLEAN,
        CLEAN.replace(" ", "  "),  # a duplicate after normalisation
        r1("Add three and four, giving seven."),
        r1("Sum them up to get seven."),
        r1("Adding them gives seven as the total."),
        "The answer is 7.",
        r1("First add 三 and 四."),
        r1(varied_text(100)),
        r1("so the answer is " * 30),
        r1("```\nprint(7)\n```"),
    ]
    cands = [
        candidate(prompt(rng.randrange(8), rng.choice(["arithmetic", "countdown"])), rng.choice(pool),
                  correct=rng.random() < 0.7)
        for _ in range(300)
    ]
    kept, rejected = select_completions(cands, SETTINGS)
    assert len(kept) + sum(rejected.values()) == len(cands)
    kept_ids = {id(k) for k in kept}
    assert len(kept_ids) == len(kept) and kept_ids <= {id(c) for c in cands}
    assert set(rejected) <= {"incorrect", "duplicate", "over_cap", *COT_REJECTION_REASONS}
    assert rejected["incorrect"] == sum(not c["correct"] for c in cands)
    per_prompt = Counter((k["sample"]["task"], k["sample"]["id"]) for k in kept)
    assert max(per_prompt.values()) <= SETTINGS.max_per_prompt
    keys = [(k["sample"]["task"], k["sample"]["id"], normalize_for_dedup(k["completion"])) for k in kept]
    assert len(keys) == len(set(keys))  # no duplicates within a prompt
    # The mix is rich enough to exercise every way out.
    assert set(rejected) == {"incorrect", "duplicate", "over_cap", *COT_REJECTION_REASONS}


# --- mix_non_reasoning --------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.75])
def test_mix_ratio(ratio):
    reasoning = [("r", i) for i in range(600)]
    other = [("n", i) for i in range(5000)]
    mixed = mix_non_reasoning(reasoning, other, ratio, seed=1)
    n_other = sum(row[0] == "n" for row in mixed)
    assert n_other / len(mixed) == pytest.approx(ratio, abs=1e-3)
    assert sorted(r for r in mixed if r[0] == "r") == reasoning  # every reasoning row, once
    assert len(set(mixed)) == len(mixed)


def test_mix_is_seeded_and_shuffled():
    reasoning, other = list(range(100)), list(range(1000, 1500))
    first = mix_non_reasoning(reasoning, other, 0.3, seed=7)
    assert first == mix_non_reasoning(reasoning, other, 0.3, seed=7)
    assert first != mix_non_reasoning(reasoning, other, 0.3, seed=8)
    assert first != sorted(first)


def test_mix_zero_ratio_and_too_few_rows():
    assert sorted(mix_non_reasoning([1, 2, 3], [10, 11], 0.0, seed=0)) == [1, 2, 3]
    assert sorted(mix_non_reasoning([1, 2, 3], [10, 11], 0.9, seed=0)) == [1, 2, 3, 10, 11]
    assert mix_non_reasoning([], [10, 11], 0.5, seed=0) == []


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_mix_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        mix_non_reasoning([1], [2], ratio, seed=0)


# --- acceptance_stats ---------------------------------------------------------------------------------


def test_acceptance_stats():
    a1, a2, c1 = prompt(1), prompt(2), prompt(1, "countdown")
    cands = [candidate(a1), candidate(a1), candidate(a1), candidate(a2), candidate(c1), candidate(c1)]
    kept = [cands[0], cands[1], cands[4]]
    stats = acceptance_stats(cands, kept)
    assert list(stats) == ["arithmetic", "countdown", "all"]
    assert stats["arithmetic"] == {
        "prompts": 2, "candidates": 4, "kept": 2, "acceptance_rate": 0.5, "prompt_coverage": 0.5
    }
    assert stats["countdown"] == {
        "prompts": 1, "candidates": 2, "kept": 1, "acceptance_rate": 0.5, "prompt_coverage": 1.0
    }
    assert stats["all"] == {
        "prompts": 3, "candidates": 6, "kept": 3, "acceptance_rate": 0.5,
        "prompt_coverage": pytest.approx(2 / 3),
    }


def test_acceptance_stats_empty():
    assert acceptance_stats([], []) == {
        "all": {"prompts": 0, "candidates": 0, "kept": 0, "acceptance_rate": 0.0, "prompt_coverage": 0.0}
    }


def test_acceptance_stats_from_select():
    cands = [candidate(prompt(i % 3), CLEAN, correct=i % 2 == 0) for i in range(6)]
    kept, _ = select_completions(cands, SETTINGS)
    stats = acceptance_stats(cands, kept)
    assert stats["all"]["kept"] == len(kept) == 3
    assert stats["all"]["prompt_coverage"] == 1.0


def test_format_style_follows_the_recipes_format_reward():
    boxed = "<think>\n3 + 4 = 7\n</think>\nThe answer is \\boxed{7}."
    assert cot_rejection_reason(boxed, MATH, SETTINGS) == "bad_format"
    assert cot_rejection_reason(boxed, MATH, FilterSettings(format_style="think_boxed")) is None
    r1 = "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>"
    assert cot_rejection_reason(r1, MATH, FilterSettings(format_style="think_boxed")) == "bad_format"
