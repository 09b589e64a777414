"""Format reward and the block extractors: the exact R1 layout, and everything that is not it."""
import time

import pytest

from rewards import Reward, extract_answer_block, extract_think_block, format_reward

GOOD = "<think>Add them: 2 + 2 = 4.</think>\n<answer>4</answer>"


@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "  \n<think>x</think><answer>4</answer>\n\n",  # surrounding whitespace
        "<think>x</think>   \n\t <answer> 4 </answer>",  # whitespace between blocks and in the answer
        "<think></think><answer>4</answer>",  # an empty think block is a layout question only
        "<think>多语言 ✓ émoji 🙂</think><answer>√2 ≈ 1.414</answer>",  # unicode
        "<think>a < b and c > d, <thinking> is not a tag</think><answer>x</answer>",
    ],
)
def test_well_formed_completions_score_one(completion):
    r = format_reward(completion, {})
    assert isinstance(r, Reward)
    assert (float(r), r.reason) == (1.0, "ok")


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("just an answer: 4", "missing_think"),
        ("<answer>4</answer>", "missing_think"),
        ("<think>x</think>", "missing_answer"),
        ("<think>x</think>4", "missing_answer"),
        ("<think>unclosed thinking <answer>4</answer>", "nested_tag"),
        ("<think>x</think><answer>4", "missing_answer"),  # truncated
        ("<think>x", "missing_think"),
        ("x</think><answer>4</answer>", "missing_think"),  # pre-filled template, option not set
        ("<think>x</think><answer></answer>", "empty_answer"),
        ("<think>x</think><answer> \n\t </answer>", "empty_answer"),
        ("<think>a</think><think>b</think><answer>4</answer>", "repeated_tag"),
        ("<think>x</think><answer>4</answer><answer>5</answer>", "repeated_tag"),
        ("<think>x</think></think><answer>4</answer>", "repeated_tag"),
        ("<think>x</think><answer>4</answer></answer>", "repeated_tag"),
        ("<think>x</think><answer>4</answer><think>", "repeated_tag"),
        ("<think><think>x</think></think><answer>4</answer>", "nested_tag"),
        ("<think>x <answer>4</answer></think><answer>4</answer>", "nested_tag"),
        ("<think>x</think><answer>4 <think>y</think></answer>", "nested_tag"),
        ("<answer>4</answer><think>x</think>", "wrong_order"),
        ("Sure! <think>x</think><answer>4</answer>", "text_outside_tags"),
        ("<think>x</think> so the answer is <answer>4</answer>", "text_outside_tags"),
        ("<think>x</think><answer>4</answer> Hope this helps!", "text_outside_tags"),
        ("<think>x</think><answer>4</answer>.", "text_outside_tags"),
    ],
)
def test_malformed_completions_score_zero_with_reason(completion, reason):
    r = format_reward(completion, {})
    assert float(r) == 0.0
    assert r.reason == reason


def test_prefilled_think_template():
    completion = "Let me add: 2 + 2 = 4.</think>\n<answer>4</answer>"
    assert format_reward(completion, {}, prefilled_think=True) == 1.0
    assert format_reward(completion, {}).reason == "missing_think"
    # The prompt already opened the block: another <think> is a repeat, even a well-formed one.
    assert format_reward(GOOD, {}, prefilled_think=True).reason == "repeated_tag"
    assert format_reward("reasoning<answer>4</answer>", {}, prefilled_think=True).reason == "nested_tag"
    assert format_reward("reasoning", {}, prefilled_think=True).reason == "missing_think"
    assert format_reward("r</think><answer> </answer>", {}, prefilled_think=True).reason == "empty_answer"
    assert format_reward("r</think>x<answer>4</answer>", {}, prefilled_think=True).reason == "text_outside_tags"


def test_megabyte_completions_are_scored_quickly():
    big_think = "<think>" + "word " * 200_000 + "</think><answer>4</answer>"
    many_tags = "<answer></answer>" * 60_000  # ~1 MB of tags
    junk = "x" * 1_000_000
    start = time.perf_counter()
    assert format_reward(big_think, {}) == 1.0
    assert format_reward(many_tags, {}).reason == "repeated_tag"
    assert format_reward(junk, {}).reason == "missing_think"
    assert extract_answer_block(many_tags) == ""
    assert extract_answer_block("</answer>" * 100_000 + "<answer>" * 100_000) is None
    assert time.perf_counter() - start < 2.0


def test_extract_answer_block_takes_the_last_well_formed_block():
    assert extract_answer_block(GOOD) == "4"
    assert extract_answer_block("<answer>1</answer> then <answer> 2 \n</answer>") == "2"
    assert extract_answer_block("<answer><answer>inner</answer>") == "inner"
    assert extract_answer_block("<answer>1</answer><answer>unclosed") == "1"
    assert extract_answer_block("<answer>unclosed") is None
    assert extract_answer_block("</answer>backwards<answer>") is None
    assert extract_answer_block("no tags") is None
    assert extract_answer_block("<answer></answer>") == ""


def test_extract_think_block():
    assert extract_think_block(GOOD) == "Add them: 2 + 2 = 4."
    assert extract_think_block("<think>unclosed") is None
    assert extract_think_block("no think here") is None
    # A pre-filled template: everything before </think>, with or without the option.
    assert extract_think_block("reasoning</think><answer>4</answer>") == "reasoning"
    assert extract_think_block("reasoning</think><answer>4</answer>", prefilled_think=True) == "reasoning"
    assert extract_think_block("<think>a</think> b <think>c</think>") == "a"


def test_think_boxed_style_is_fast_on_megabyte_inputs():
    big_think = "<think>" + "word {" * 200_000 + "</think> \\boxed{4}"
    many_tags = "<think></think>" * 60_000
    start = time.perf_counter()
    assert format_reward(big_think, {}, style="think_boxed") == 1.0
    assert format_reward(many_tags, {}, style="think_boxed").reason == "repeated_tag"
    assert format_reward("x" * 1_000_000, {}, style="think_boxed").reason == "missing_think"
    assert time.perf_counter() - start < 2.0
