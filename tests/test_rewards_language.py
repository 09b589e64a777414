"""Language consistency: share of CoT words in the target script."""
import time

import pytest

from rewards import language_consistency_reward


def cot(text):
    return f"<think>{text}</think><answer>42</answer>"


@pytest.mark.parametrize(
    "text, language",
    [
        ("First add the numbers, then divide by two.", "en"),
        ("我们先把两个数相加，然后除以二。", "zh"),
        ("Сначала сложим числа, затем разделим на два.", "ru"),
        ("أولا نجمع الأعداد ثم نقسم على اثنين", "ar"),
        ("まず数を足して、それから二で割ります。カタカナ", "ja"),
        ("먼저 숫자를 더한 다음 둘로 나눕니다", "ko"),
    ],
)
def test_single_language_cot_scores_one(text, language):
    r = language_consistency_reward(cot(text), {"language": language})
    assert (float(r), r.reason) == (1.0, "ok")


def test_mixed_cot_scores_the_fraction():
    # 4 Han characters (one word each) + 1 English word.
    r = language_consistency_reward(cot("我们 compute 这个"), {"language": "zh"})
    assert float(r) == pytest.approx(4 / 5) and r.reason == "mixed_language"
    # 3 English words + 2 Han characters.
    r = language_consistency_reward(cot("we compute 这个 value"), {})
    assert float(r) == pytest.approx(3 / 5)
    r = language_consistency_reward(cot("Считаем сумму then divide"), {"language": "ru"})
    assert float(r) == pytest.approx(2 / 4)


def test_option_overrides_sample_language():
    text = cot("Сначала сложим числа")
    assert language_consistency_reward(text, {"language": "en"}) == 0.0
    assert language_consistency_reward(text, {"language": "en"}, language="ru") == 1.0


def test_numbers_punctuation_latex_and_variables_are_not_words():
    text = "设 x = 3, 则 \\frac{x}{2} + \\alpha = 1.5 ... 所以 $y^2$ 成立"
    r = language_consistency_reward(cot(text), {"language": "zh"})
    assert (float(r), r.reason) == (1.0, "ok")
    r = language_consistency_reward(cot("\\sum_{i=1}^{n} i = 55; 42!"), {})
    assert (float(r), r.reason) == (0.0, "no_words")


def test_empty_cot_and_no_think_block():
    assert language_consistency_reward(cot("   "), {}).reason == "empty_cot"
    assert language_consistency_reward("", {}).reason == "empty_cot"
    # No think block: the whole completion is the CoT.
    assert language_consistency_reward("plain english reasoning", {}) == 1.0
    assert language_consistency_reward("纯中文推理", {"language": "zh"}) == 1.0
    # A pre-filled template: the text before </think> is the CoT, not the answer after it.
    r = language_consistency_reward("english thoughts</think><answer>中文答案</answer>", {})
    assert (float(r), r.reason) == (1.0, "ok")


def test_only_the_cot_counts():
    r = language_consistency_reward("<think>english only</think><answer>中文答案很长很长</answer>", {})
    assert float(r) == 1.0


def test_unknown_language():
    r = language_consistency_reward(cot("text"), {"language": "xx"})
    assert (float(r), r.reason) == (0.0, "unknown_language:xx")


def test_megabyte_cot_is_scored_quickly():
    text = ("reasoning step " * 30_000) + ("推理步骤" * 60_000) + ("рассуждение " * 20_000)
    start = time.perf_counter()
    r = language_consistency_reward(cot(text), {"language": "en"})
    assert time.perf_counter() - start < 3.0
    assert float(r) == pytest.approx(60_000 / (60_000 + 240_000 + 20_000))
