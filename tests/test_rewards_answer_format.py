"""Answers where models really put them: the <answer> block, the last \\boxed{} after </think>, the last number.

One table of completions, each scored by the correctness reward under every answer_format: R1-tag, boxed and
last-number completions are all correct under ``auto``, and each format misses the layouts it does not read,
with the reason metrics count. Then the think_boxed format style, and option values checked at load.
"""
import pytest

from pipeline.config import ConfigError, load_config
from rewards import correctness_reward, format_reward, weighted_sum
from rewards.accuracy import accuracy_reward
from rewards.answers import extract_final_answer, last_number
from rewards.boxed import last_boxed

FORMATS = ("tags", "boxed", "last_number", "auto")
OK = "ok"

# (case id, completion, gold, prefilled_think, {answer_format: expected reason}); "ok" scores 1.0, any other
# reason 0.0. "wrong" = an answer was found but is not the gold one.
CASES = [
    ("r1_tags", "<think>6 * 7 = 42</think>\n<answer>42</answer>", "42", False,
     {"tags": OK, "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("r1_tags_boxed_inside", "<think>6 * 7</think><answer>\\boxed{42}</answer>", "42", False,
     {"tags": OK, "boxed": OK, "last_number": OK, "auto": OK}),
    ("r1_tags_then_reasoning_number", "<think>x</think><answer>42</answer> (checked with 7 tries)", "42", False,
     {"tags": OK, "boxed": "no_boxed", "last_number": "wrong", "auto": OK}),
    ("boxed_distill", "<think>6 * 7 = 42, so</think>\nThe answer is $\\boxed{42}$.", "42", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
    ("boxed_nested_braces", "<think>half of 1</think> So $x = \\boxed{\\frac{1}{2}}$", "0.5", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
    ("boxed_in_think_ignored", "<think>first try \\boxed{41}</think> Rechecked: \\boxed{42}", "42", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
    ("boxed_only_in_think", "<think>so \\boxed{42}</think> Done.", "42", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": "no_number", "auto": "no_answer"}),
    ("boxed_then_number", "<think>x</think> \\boxed{42}, found in 7 steps", "42", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": "wrong", "auto": OK}),
    ("tags_win_over_box", "<think>x</think><answer>41</answer> \\boxed{42}", "42", False,
     {"tags": "wrong", "boxed": OK, "last_number": OK, "auto": "wrong"}),
    ("fbox", "<think>x</think> \\fbox{42}", "42", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
    ("empty_box", "<think>x</think> \\boxed{ } 42", "42", False,
     {"tags": "no_answer_block", "boxed": "empty_answer", "last_number": OK, "auto": "empty_answer"}),
    ("gsm8k_last_number", "She sells 16 - 3 - 4 = 9 eggs at $2 each, so 9 * 2 = 18 dollars.", "18", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("last_number_thousands", "<think>500 + 500</think> The total is $1,000.", "1000", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("last_number_negative_decimal", "<think>2 - 5.5</think> It ends at -3.5 degrees.", "-3.5", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("last_number_fraction", "<think>3 of 4</think> The share is 3/4.", "0.75", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("last_number_latex_fraction", "<think>3 of 4</think> The share is $\\dfrac{3}{4}$", "3/4", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("last_number_minus_is_an_operator", "<think>x</think> 45-3", "3", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("no_number_after_think", "<think>it is 42</think> I am not sure.", "42", False,
     {"tags": "no_answer_block", "boxed": "no_boxed", "last_number": "no_number", "auto": "no_answer"}),
    ("unclosed_think", "<think>6 * 7 = 42, so \\boxed{42}", "42", False,
     {"tags": "no_answer_block", "boxed": "unclosed_think", "last_number": "unclosed_think",
      "auto": "unclosed_think"}),
    # The chat template opened <think>: the completion starts inside it.
    ("prefilled_boxed", "6 * 7 = 42\n</think>\n\nThe answer is \\boxed{42}.", "42", True,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
    ("prefilled_tags", "6 * 7 = 42</think><answer>42</answer>", "42", True,
     {"tags": OK, "boxed": "no_boxed", "last_number": OK, "auto": OK}),
    ("prefilled_never_closed", "6 * 7 = 42 so \\boxed{42}", "42", True,
     {"tags": "no_answer_block", "boxed": "unclosed_think", "last_number": "unclosed_think",
      "auto": "unclosed_think"}),
    ("same_text_not_prefilled", "6 * 7 = 42 so \\boxed{42}", "42", False,
     {"tags": "no_answer_block", "boxed": OK, "last_number": OK, "auto": OK}),
]


@pytest.mark.parametrize("answer_format", FORMATS)
@pytest.mark.parametrize("case_id, completion, gold, prefilled, expected", CASES, ids=[c[0] for c in CASES])
def test_answer_format_table(case_id, completion, gold, prefilled, expected, answer_format):
    r = correctness_reward(completion, {"answer": gold}, answer_format=answer_format, prefilled_think=prefilled)
    want = expected[answer_format]
    assert (float(r), r.reason) == (1.0 if want == OK else 0.0, want)


def test_auto_scores_every_layout_correct():
    """The closing-note claim in one place: every R1-tag, boxed and last-number case of the table is correct
    under auto, and for each of those layouts some other format misses it."""
    layouts = {"r1_tags": "tags", "boxed_distill": "boxed", "gsm8k_last_number": "last_number",
               "prefilled_boxed": "boxed"}
    table = {c[0]: c for c in CASES}
    for case_id, native in layouts.items():
        _, completion, gold, prefilled, expected = table[case_id]
        assert correctness_reward(completion, {"answer": gold}, answer_format="auto", prefilled_think=prefilled) == 1.0
        assert correctness_reward(completion, {"answer": gold}, answer_format=native, prefilled_think=prefilled) == 1.0
        assert any(v != OK for v in expected.values()), case_id


def test_tags_stays_the_default():
    boxed = "<think>x</think> \\boxed{42}"
    assert correctness_reward(boxed, {"answer": "42"}).reason == "no_answer_block"
    assert accuracy_reward(boxed, {"answer": "42"}).reason == "no_answer_block"
    assert accuracy_reward(boxed, {"answer": "42"}, answer_format="boxed") == 1.0


def test_countdown_reads_a_box_outside_tags():
    sample = {"verifier": "countdown", "numbers": [2, 3, 4], "target": 14}
    boxed = "<think>2 + 3 * 4 = 14</think> \\boxed{2 + 3 * 4}"
    assert correctness_reward(boxed, sample).reason == "no_answer_block"
    for answer_format in ("boxed", "auto", "last_number"):  # an expression is never a "last number"
        assert correctness_reward(boxed, sample, answer_format=answer_format) == 1.0
    assert correctness_reward("<think>x</think> 14", sample, answer_format="auto").reason == "no_boxed"
    assert correctness_reward("2 + 3 * 4 = 14", sample, answer_format="boxed", prefilled_think=True).reason == (
        "unclosed_think")


@pytest.mark.parametrize("text, expected", [
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{1} then \\fbox{2}", "2"),
    ("\\boxed{\\boxed{3}}", "\\boxed{3}"),
    ("\\boxed{12", None),
    ("no box", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("is 42.", "42"), ("1,000 apples", "1000"), ("$1,234.50", "1234.50"), ("x = -3.5", "-3.5"),
    ("5-3", "3"), ("(2)-3", "3"), ("3/4", "3/4"), ("\\frac{3}{4}", "3/4"), ("-\\dfrac{1}{2}", "-1/2"),
    ("1, 2, 3", "3"), ("x2 and v1.5", None), ("no digits", None), ("100%", "100"),
])
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_extraction_is_linear_on_megabyte_inputs():
    import time

    big = "<think>" + "7 " * 300_000 + "</think>" + "{" * 200_000 + " 42"
    start = time.perf_counter()
    for answer_format in FORMATS:
        extract_final_answer(big, answer_format)
    assert extract_final_answer(big, "last_number") == ("42", "ok")
    assert time.perf_counter() - start < 2.0


THINK_BOXED_OK = [
    ("<think>6 * 7</think>\nThe answer is $\\boxed{42}$.", False),
    ("  <think></think>\\boxed{\\frac{1}{2}}  ", False),
    ("<think>x</think><answer>\\boxed{42}</answer>", False),  # tags around the box are fine
    ("6 * 7\n</think>\n\n**Answer:** \\boxed{42}", True),
]
THINK_BOXED_BAD = [
    ("", False, "empty"),
    ("The answer is \\boxed{42}", False, "missing_think"),
    ("<think>x \\boxed{42}", False, "missing_think"),  # never closed
    ("x</think> \\boxed{42}", False, "missing_think"),  # a pre-filled template, option not set
    ("Sure! <think>x</think> \\boxed{42}", False, "text_outside_tags"),
    ("<think>a</think><think>b</think> \\boxed{42}", False, "repeated_tag"),
    ("<think>x</think> \\boxed{42} </think>", False, "repeated_tag"),
    ("<think>x</think>", False, "missing_answer"),
    ("<think>x \\boxed{42}</think> so 42", False, "missing_boxed"),  # a box inside the think block
    ("<think>x</think><answer>42</answer>", False, "missing_boxed"),  # the R1 layout is not this style
    ("<think>x</think> \\boxed{ }", False, "empty_answer"),
    ("<think>x</think> \\boxed{42", False, "missing_boxed"),  # unbalanced
    ("<think>x</think> \\boxed{42}", True, "repeated_tag"),  # the prompt opened <think> already
    ("x \\boxed{42}", True, "missing_think"),
]


@pytest.mark.parametrize("completion, prefilled", THINK_BOXED_OK)
def test_think_boxed_style_passes(completion, prefilled):
    r = format_reward(completion, {}, style="think_boxed", prefilled_think=prefilled)
    assert (float(r), r.reason) == (1.0, "ok")


@pytest.mark.parametrize("completion, prefilled, reason", THINK_BOXED_BAD)
def test_think_boxed_style_failures(completion, prefilled, reason):
    r = format_reward(completion, {}, style="think_boxed", prefilled_think=prefilled)
    assert (float(r), r.reason) == (0.0, reason)


def test_r1_style_is_the_default_and_rejects_boxed_layouts():
    boxed = "<think>x</think> \\boxed{42}"
    assert format_reward(boxed, {}).reason == "missing_answer"
    assert format_reward(boxed, {}, style="r1").reason == "missing_answer"
    assert format_reward(boxed, {}, style="think_boxed") == 1.0


def test_prefilled_think_reaches_correctness_and_format_through_weighted_sum():
    score = weighted_sum([{"name": "format", "weight": 0.5, "options": {"style": "think_boxed"}},
                          {"name": "correctness", "options": {"answer_format": "boxed"}}], prefilled_think=True)
    total, parts = score("6 * 7 = 42</think> \\boxed{42}", {"answer": "42"})
    assert total == 1.5 and parts["format"].reason == parts["correctness"].reason == "ok"
    total, parts = score("6 * 7 = 42 \\boxed{42}", {"answer": "42"})  # still thinking: nothing is final
    assert total == 0.0 and parts["correctness"].reason == "unclosed_think"


@pytest.mark.parametrize("call", [
    lambda: correctness_reward("x", {"answer": "1"}, answer_format="boxd"),
    lambda: accuracy_reward("x", {"answer": "1"}, answer_format="latex"),
    lambda: format_reward("x", {}, style="distill"),
])
def test_bad_values_raise_one_line_naming_the_accepted_ones(call):
    with pytest.raises(ValueError, match="expected one of") as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override, words", [
    ("eval.rewards.correctness.options.answer_format=boxd", ["answer_format='boxd'", "'last_number'", "'auto'"]),
    ("eval.rewards.format.options.style=distill", ["style='distill'", "'r1'", "'think_boxed'"]),
    ("rewards.items.1.options.answer_format=boxd", ["answer_format='boxd'", "'tags'", "'boxed'"]),
    ("rewards.items.0.options.style=distill", ["style='distill'", "'think_boxed'"]),
])
def test_bad_option_values_fail_when_the_config_loads(override, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
