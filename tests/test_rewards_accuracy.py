"""Math accuracy: equivalences math-verify must see, every failure reason, and bounded time on any thread."""
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import Reward, accuracy_reward
from rewards.accuracy import final_answer_text
from rewards.math_check_pool import HelperPool, shared_pool

TIMEOUT = 1.0
SLACK = 1.5  # process scheduling on a busy 2-core machine, plus whole-second alarm rounding
PATHOLOGICAL = [
    "9^{9^{9^{9}}}",
    "10^{10^{10^{10}}}!",
    "(10^{100})!",
    "(" * 490 + "1" + ")" * 490,  # under the length cap, yet the LaTeX parser chokes on it
]


def answer(text: str) -> str:
    return f"<think>Let me work it out.</think>\n<answer>{text}</answer>"


def in_thread(fn, *args, **kwargs):
    """Run fn in a fresh non-main thread; return (result, seconds)."""
    out = {}

    def target():
        start = time.perf_counter()
        out["result"] = fn(*args, **kwargs)
        out["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "reward hung in a worker thread"
    return out["result"], out["seconds"]


@pytest.fixture(scope="module")
def warm_helpers():
    """Start the shared helper processes once, so timing assertions measure checks, not start-up."""
    with ThreadPoolExecutor(shared_pool().size) as pool:
        assert all(r == 1.0 for r in pool.map(lambda _: accuracy_reward(answer("1"), {"answer": "1"}), range(4)))


EQUIVALENT = [
    ("42", "42"),
    ("-7", "-7"),
    ("0.5", "\\frac{1}{2}"),
    ("0.5", "1/2"),
    ("\\frac{1}{2}", "0.5"),
    ("0.75", "\\dfrac{3}{4}"),
    ("3/4", "0.75"),
    ("\\frac{3}{4}", "3/4"),
    ("12", "$\\boxed{12}$"),
    ("-3", "$\\boxed{-3}$"),
    ("2.5", "5/2"),
    ("42", "The answer is \\boxed{42}."),
    ("42", "$42$"),
    ("2\\sqrt{2}", "\\sqrt{8}"),  # bare LaTeX read as LaTeX, not as the number 2
    ("1000", "1{,}000"),
]
NOT_EQUIVALENT = [
    ("42", "41"),
    ("0.5", "\\frac{1}{3}"),
    ("3/4", "4/3"),
    ("-3", "3"),
    ("2\\sqrt{2}", "2"),  # the raw-text reading would wrongly see just "2"
    ("12", "$\\boxed{13}$"),
    ("12", "\\boxed{12} \\boxed{13}"),  # the last box is the answer
]


@pytest.mark.parametrize("gold, text", EQUIVALENT)
def test_equivalent_answers_score_one(gold, text):
    r = accuracy_reward(answer(text), {"answer": gold})
    assert (float(r), r.reason) == (1.0, "ok")


@pytest.mark.parametrize("gold, text", NOT_EQUIVALENT)
def test_wrong_answers_score_zero(gold, text):
    r = accuracy_reward(answer(text), {"answer": gold})
    assert (float(r), r.reason) == (0.0, "wrong")


def test_gold_may_be_a_json_number():
    assert accuracy_reward(answer("\\frac{1}{2}"), {"answer": 0.5}) == 1.0
    assert accuracy_reward(answer("42"), {"answer": 42}) == 1.0


@pytest.mark.parametrize(
    "completion, sample, reason",
    [
        ("<think>x</think> 42", {"answer": "42"}, "no_answer_block"),
        ("\\boxed{42}", {"answer": "42"}, "no_answer_block"),  # no fallback outside the answer block
        (answer("  "), {"answer": "42"}, "empty_answer"),
        (answer("\\boxed{ }"), {"answer": "42"}, "empty_answer"),
        (answer("42"), {}, "unparsable_gold"),
        (answer("42"), {"answer": ""}, "unparsable_gold"),
        (answer("42"), {"answer": "???"}, "unparsable_gold"),
        (answer("???"), {"answer": "42"}, "unparsable_answer"),
        (answer("\\frac{"), {"answer": "42"}, "unparsable_answer"),
        (answer("1" * 1001), {"answer": "42"}, "answer_too_long"),
    ],
)
def test_failure_reasons(completion, sample, reason):
    r = accuracy_reward(completion, sample)
    assert (float(r), r.reason) == (0.0, reason)


def test_answer_length_cap_is_an_option():
    long_but_fine = "0" * 1500 + "42"
    assert accuracy_reward(answer(long_but_fine), {"answer": "42"}).reason == "answer_too_long"
    assert accuracy_reward(answer(long_but_fine), {"answer": "42"}, max_answer_chars=None) == 1.0


def test_megabyte_completion_is_rejected_quickly():
    start = time.perf_counter()
    r1 = accuracy_reward(answer("1+" * 500_000), {"answer": "42"})
    r2 = accuracy_reward("<think>" + "x" * 1_000_000, {"answer": "42"})
    r3 = accuracy_reward(answer("{" * 500_000 + "\\boxed{42}"), {"answer": "42"})
    assert time.perf_counter() - start < 2.0
    assert (r1.reason, r2.reason) == ("answer_too_long", "no_answer_block")
    assert r3 == 1.0  # the last balanced box wins even inside a megabyte of unbalanced braces


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), float("inf"), "5"])
def test_bad_timeout_is_a_clear_error(timeout_s):
    with pytest.raises(ValueError, match="timeout_s"):
        accuracy_reward(answer("1"), {"answer": "1"}, timeout_s=timeout_s)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{42}", "42"),
        ("first \\boxed{1}, then \\boxed{ 2 }", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are content
        ("\\boxed {7}", "7"),
        ("\\boxed{\\boxed{3}}", "\\boxed{3}"),  # the box that closes last
        ("\\boxed{12", "\\boxed{12"),  # unbalanced: the whole text
        ("  plain 5 ", "plain 5"),
    ],
)
def test_final_answer_text(text, expected):
    assert final_answer_text(text) == expected


@pytest.mark.parametrize("isolate", [True, False])
@pytest.mark.parametrize("gold, text", [("0.5", "\\frac{1}{2}"), ("0.75", "\\dfrac{3}{4}"), ("42", "41")])
def test_in_process_and_isolated_checks_agree(gold, text, isolate):
    expected = accuracy_reward(answer(text), {"answer": gold})
    r = accuracy_reward(answer(text), {"answer": gold}, isolate=isolate)
    assert (float(r), r.reason) == (float(expected), expected.reason)


@pytest.mark.parametrize("isolate", [True, False])
def test_pathological_answer_times_out_in_main_thread(warm_helpers, isolate):
    assert threading.current_thread() is threading.main_thread()
    start = time.perf_counter()
    r = accuracy_reward(answer("9^{9^{9^{9}}}"), {"answer": "42"}, timeout_s=TIMEOUT, isolate=isolate)
    assert time.perf_counter() - start < TIMEOUT + SLACK
    assert (float(r), r.reason) == (0.0, "timeout")


def test_big_integer_in_c_is_bounded_by_isolation(warm_helpers):
    # In-process, this takes ~20 s and 4 GB inside one C call that no alarm interrupts; the helper's
    # memory limit turns it into a quick MemoryError (or its kill into a timeout).
    start = time.perf_counter()
    r = accuracy_reward(answer("\\gcd(10^{10^{10}}, 7)"), {"answer": "42"}, timeout_s=TIMEOUT)
    assert time.perf_counter() - start < TIMEOUT + SLACK
    assert float(r) == 0.0 and r.reason in ("wrong", "timeout", "unparsable_answer")


@pytest.mark.parametrize("text", PATHOLOGICAL)
def test_pathological_answers_time_out_in_a_worker_thread(warm_helpers, text):
    r, seconds = in_thread(accuracy_reward, answer(text), {"answer": "42"}, timeout_s=TIMEOUT)
    assert seconds < TIMEOUT + SLACK
    assert (float(r), r.reason) == (0.0, "timeout")


def test_huge_answer_without_cap_is_bounded_in_a_worker_thread(warm_helpers):
    r, seconds = in_thread(
        accuracy_reward, answer("1+" * 50_000 + "1"), {"answer": "42"}, timeout_s=TIMEOUT, max_answer_chars=None
    )
    assert seconds < TIMEOUT + SLACK
    assert (float(r), r.reason) == (0.0, "timeout")


def test_worker_threads_agree_with_the_main_thread(warm_helpers):
    cases = [(g, t, 1.0) for g, t in EQUIVALENT] + [(g, t, 0.0) for g, t in NOT_EQUIVALENT]
    cases += [("42", "9^{9^{9^{9}}}", 0.0), ("7", "???", 0.0)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: accuracy_reward(answer(c[1]), {"answer": c[0]}, timeout_s=TIMEOUT), cases))
    assert [float(r) for r in results] == [c[2] for c in cases]
    assert results[-2].reason == "timeout" and results[-1].reason == "unparsable_answer"


def test_a_helper_that_overruns_is_killed_and_replaced():
    pool = HelperPool(size=1)
    try:
        assert pool.check("1", "1", 5.0) == (True, "ok")
        (helper,) = pool._idle
        # 0.3 s is below the helper's own one-second alarm: only the parent's kill can stop it in time.
        start = time.perf_counter()
        assert pool.check("42", "9^{9^{9^{9}}}", 0.3) == (False, "timeout")
        assert time.perf_counter() - start < 0.3 + SLACK
        assert helper.proc.poll() is not None, "the overrunning helper must be killed"
        assert pool.check("0.5", "\\frac{1}{2}", 5.0) == (True, "ok")  # a fresh helper takes over
        assert pool._idle and pool._idle[0] is not helper
    finally:
        pool.close()
    assert all(h.proc.poll() is not None for h in [helper])


def _score_in_a_thread(queue):
    r, _ = in_thread(accuracy_reward, answer("\\dfrac{3}{4}"), {"answer": "0.75"})
    queue.put((float(r), r.reason, shared_pool()._pid == os.getpid()))


def test_forked_child_starts_its_own_helpers(warm_helpers):
    # A forked Ray/multiprocessing worker must not talk to its parent's helper processes.
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_score_in_a_thread, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) == (1.0, "ok", True)
    finally:
        child.join(10)
    assert child.exitcode == 0
    assert accuracy_reward(answer("2"), {"answer": "2"}) == 1.0  # the parent's helpers still work
    r, _ = in_thread(accuracy_reward, answer("2"), {"answer": "2"})
    assert r == 1.0


def test_rewards_survive_pickling():
    r = accuracy_reward(answer("41"), {"answer": "42"})
    back = pickle.loads(pickle.dumps(r))
    assert isinstance(back, Reward) and (float(back), back.reason) == (0.0, "wrong")
    assert pickle.loads(pickle.dumps(Reward(1.0, "ok"))).reason == "ok"


def test_helpers_that_cannot_start_degrade_gracefully(monkeypatch):
    import rewards.accuracy
    import rewards.math_check_pool as pool_module

    monkeypatch.setattr(pool_module, "_BOOT", "import sys; sys.exit(3)")
    broken = HelperPool(size=1)
    start = time.perf_counter()
    assert broken.check("1", "1", 5.0) == (False, "verifier_unavailable")
    assert broken.check("1", "1", 5.0) == (False, "verifier_unavailable")  # no retry storm
    assert time.perf_counter() - start < 5.0
    monkeypatch.setattr(rewards.accuracy, "shared_pool", lambda: broken)
    # The main thread falls back to math-verify's in-process check; other threads cannot.
    assert accuracy_reward(answer("\\frac{1}{2}"), {"answer": "0.5"}) == 1.0
    r, _ = in_thread(accuracy_reward, answer("\\frac{1}{2}"), {"answer": "0.5"})
    assert (float(r), r.reason) == (0.0, "verifier_unavailable")


@pytest.mark.parametrize("answer_format, completion", [
    ("boxed", "<think>x</think> \\boxed{" + "1" * 1001 + "}"),
    ("last_number", "<think>x</think> " + "1" * 1001),
])
def test_answer_length_cap_applies_to_every_answer_format(answer_format, completion):
    r = accuracy_reward(completion, {"answer": "42"}, answer_format=answer_format)
    assert (float(r), r.reason) == (0.0, "answer_too_long")
