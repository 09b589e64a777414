"""rewards.testing, the kit users import: the reference cases agree with our real rewards, check_reward finds
planted disagreements in every reward form, and the pytest plugin's fixtures work without an import."""
import asyncio
from importlib.metadata import entry_points

import pytest

from rewards import correctness_reward, format_reward, resolve
from rewards.testing import (CASES_FILE, GROUPS, KINDS, ReferenceCase, assert_agrees, case_from_mapping,
                             check_reward, load_cases, our_reward, reference_cases)

pytest_plugins = ["pytester"]
# Hacks a lenient reward (gold text anywhere) accepts and ours does not: each must be reported.
HACKS_A_SUBSTRING_MATCH_ACCEPTS = {"answer-only-inside-think", "answer-lists-many-numbers", "hedged-answer",
                                   "unclosed-answer", "unclosed-think", "gold-in-think-wrong-answer",
                                   "several-answer-blocks-last-wrong", "missing-answer-block", "boxed-without-tags"}


@pytest.mark.parametrize("case", reference_cases(), ids=lambda c: c.id)
def test_every_reference_case_is_what_our_rewards_score(case):
    for kind, expected in case.expected.items():
        name, options = our_reward(kind)
        got = resolve(name)(case.completion, case.sample, **options)
        assert (float(got), got.reason) == (expected, case.reasons[kind]), kind


def test_the_cases_cover_each_group_and_the_hacks_the_issue_names():
    cases = reference_cases()
    assert {c.group for c in cases} == set(GROUPS) and len(cases) >= 50
    assert len({c.id for c in cases}) == len(cases)
    hacks = {c.id for c in reference_cases("hack")}
    assert {"answer-only-inside-think", "several-answer-blocks-last-wrong", "answer-lists-many-numbers",
            "empty-answer-block", "tags-in-wrong-order", "unclosed-answer", "answer-repeated-in-prose"} <= hacks
    # Every hack either scores 0 for correctness or is caught by the format reward.
    assert all(c.expected["correctness"] == 0.0 or c.expected.get("format") == 0.0 for c in reference_cases("hack"))
    assert CASES_FILE.name == "reference_cases.yaml" and CASES_FILE.parent.name == "rewards"  # packaged: *.yaml


def test_our_rewards_by_name_and_by_function_agree_with_themselves():
    for kind in KINDS:
        name, options = our_reward(kind)
        assert len(reference_cases(kind=kind)) >= 8, kind
        assert check_reward(name, kind=kind, options=options) == [], kind
    assert check_reward("correctness") == []
    assert check_reward(correctness_reward) == []
    assert check_reward("format", kind="format") == []
    assert_agrees(format_reward, kind="format")


def gold_anywhere(completion, sample):
    """Lenient: the gold answer's text anywhere in the completion."""
    return 1.0 if str(sample["answer"]) in completion else 0.0


def test_check_reward_finds_the_hacks_a_lenient_reward_accepts():
    found = check_reward(gold_anywhere)
    ids = {d.case.id for d in found}
    assert HACKS_A_SUBSTRING_MATCH_ACCEPTS <= ids
    assert "fraction-vs-decimal" in ids  # and the equivalences a string match misses
    hack = next(d for d in found if d.case.id == "answer-only-inside-think")
    assert (hack.expected, hack.got, hack.reason, hack.kind) == (0.0, 1.0, "ok", "correctness")
    assert str(hack) == ("hack/answer-only-inside-think: expected 0 (no_answer_block), got 1 (ok) -- "
                         "the gold in the reasoning is not an answer")
    with pytest.raises(AssertionError) as exc:
        assert_agrees(gold_anywhere)
    lines = str(exc.value).splitlines()
    assert lines[0] == f"gold_anywhere disagrees with r1's correctness reward on {len(found)} of " \
                       f"{len(reference_cases(kind='correctness'))} reference cases:"
    assert len(lines) == len(found) + 1 and any("answer-lists-many-numbers" in line for line in lines)


# The same checks for the other signatures: TRL (batched, columns as keyword lists), verl, async.

def trl_correct(prompts, completions, answer, **kwargs):
    return [float(correctness_reward(c, {"answer": a})) for c, a in zip(completions, answer)]


def trl_lenient(prompts, completions, answer, **kwargs):
    return [1.0 if str(a) in c else 0.0 for c, a in zip(completions, answer)]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": float(correctness_reward(solution_str, {"answer": ground_truth})), "source": data_source}


def verl_lenient(data_source, solution_str, ground_truth, extra_info=None):
    return 1.0 if str(ground_truth) in solution_str else 0.0


async def async_correct(completion, sample):
    await asyncio.sleep(0)
    return correctness_reward(completion, sample)


async def async_trl_format(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [format_reward(c) for c in completions]


@pytest.mark.parametrize("fn", [trl_correct, compute_score, async_correct], ids=lambda f: f.__name__)
def test_a_correct_wrapper_of_ours_agrees_in_every_form(fn):
    assert check_reward(fn) == []


def test_the_auto_kinds_tell_the_r1_reading_from_the_distill_reading():
    tags_vs_auto = {d.case.id for d in check_reward("correctness", kind="correctness_auto")}
    assert {"boxed-without-tags", "missing-answer-block", "unclosed-answer"} <= tags_vs_auto
    assert "answer-only-inside-think" not in tags_vs_auto  # 0 under both readings
    r1_vs_boxed = {d.case.id for d in check_reward("format", kind="format_think_boxed")}
    assert {"r1-layout", "boxed-without-tags"} <= r1_vs_boxed


def test_async_trl_format_reward_agrees_on_format_cases():
    assert check_reward(async_trl_format, kind="format") == []


@pytest.mark.parametrize("fn", [trl_lenient, verl_lenient], ids=lambda f: f.__name__)
def test_lenient_rewards_in_other_forms_are_caught(fn):
    ids = {d.case.id for d in check_reward(fn)}
    assert HACKS_A_SUBSTRING_MATCH_ACCEPTS <= ids


def test_threshold_compares_rewards_on_another_scale_and_none_disagrees():
    def out_of_ten(completion, sample):
        return 10.0 * correctness_reward(completion, sample)

    assert len(check_reward(out_of_ten)) > 0  # 10 is not 1 ...
    assert check_reward(out_of_ten, threshold=5.0) == []  # ... but passes where ours passes

    def only_fractions(completion, sample):
        return correctness_reward(completion, sample) if "/" in sample["answer"] else None

    found = check_reward(only_fractions)
    assert found and all(d.got is None and d.reason == "not_applicable" for d in found)
    assert "got None (does not apply)" in str(found[0])


def test_own_cases_as_mappings_and_options():
    cases = [{"id": "mine", "group": "equivalent", "gold": "1/4", "answer": "25\\%", "correctness": [1.0, "ok"]},
             {"id": "prefilled", "group": "format_pass", "gold": "1", "completion": "x</think><answer>1</answer>",
              "format": [1.0, "ok"]}]
    assert check_reward("correctness", cases) == []
    assert [d.case.id for d in check_reward("format", cases, kind="format")] == ["prefilled"]
    # prefilled: the completion starts inside <think>; the R1 layout of an `answer` case then repeats the tag
    for prefilled in ({"options": {"prefilled_think": True}}, {"prefilled_think": True}):
        assert [d.case.id for d in check_reward("format", cases, kind="format", **prefilled)] == ["mine"]


@pytest.mark.parametrize("raw, message", [
    ({"id": "x", "group": "nope", "answer": "1", "correctness": [1, "ok"]}, "'group' must be one of"),
    ({"id": "x", "group": "hack", "answer": "1", "completion": "1", "correctness": [1, "ok"]}, "exactly one of"),
    ({"id": "x", "group": "hack", "answer": "1", "correctness": 1}, "'correctness' must be [value, reason]"),
    ({"id": "x", "group": "hack", "completion": "1"}, "give the expected score"),
    ({"id": "x", "group": "hack", "answer": "1", "score": 1}, "unknown field(s) score"),
])
def test_a_malformed_case_is_refused_in_one_line(raw, message):
    with pytest.raises(ValueError) as exc:
        case_from_mapping(raw)
    assert message in str(exc.value) and "\n" not in str(exc.value) and "'x'" in str(exc.value)


def test_load_cases_refuses_duplicate_ids(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("- {id: a, group: hack, answer: '1', correctness: [0.0, wrong]}\n" * 2)
    with pytest.raises(ValueError, match="case id 'a' appears twice"):
        load_cases(path)
    assert isinstance(reference_cases("hack")[0], ReferenceCase)
    with pytest.raises(ValueError, match="unknown group"):
        reference_cases("hacks")


def test_the_package_registers_the_pytest_plugin():
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("r1_rewards") == "rewards.testing"


def test_plugin_fixtures_work_in_a_users_test_run_without_an_import(pytester):
    pytester.makepyfile(test_mine='''
        def my_correctness(prompts, completions, answer, **kwargs):
            return [1.0 if c.strip().endswith(f"{a}</answer>") else 0.0 for c, a in zip(completions, answer)]

        def test_fixtures(r1_reference_cases, r1_sample, r1_completions):
            from rewards import correctness_reward
            assert len(r1_reference_cases) >= 50 and r1_sample["answer"] == "3/4"
            assert correctness_reward(r1_completions["correct"], r1_sample) == 1.0
            assert correctness_reward(r1_completions["equivalent"], r1_sample) == 1.0
            assert correctness_reward(r1_completions["wrong"], r1_sample) == 0.0
            assert correctness_reward(r1_completions["answer_in_think"], r1_sample) == 0.0

        def test_my_reward_agrees():
            from rewards.testing import assert_agrees
            assert_agrees(my_correctness)
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)  # the string match misses 1/2 = 0.5: the kit says where
    result.stdout.fnmatch_lines(["*my_correctness disagrees with r1's correctness reward on * reference cases:*",
                                 "*equivalent/fraction-vs-decimal: expected 1 (ok), got 0 (ok)*"])
