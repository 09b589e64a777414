"""The test harness: parsing test cases, trusted-side comparison, and the reward hacks it must defeat.

A hack "works" when a wrong solution gets tests to pass; every one here must end with 0 passed.
"""
from __future__ import annotations

import textwrap

import pytest

from sandbox import CallTest, ProgramTest, SandboxConfig, parse_tests, run_tests
from sandbox.values import decode_value, normalise_output, outputs_match, same_value
from tests.sandbox_support import ROOT, file_digest, no_stray_processes  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_stray_processes")

FAST = SandboxConfig(timeout_s=1.0, memory_mb=256)
CORRECT = """
def digit_sum(n):
    return sum(int(d) for d in str(n))

if __name__ == "__main__":
    print(digit_sum(int(input())))
"""
CALL_TESTS = ["assert digit_sum(1234) == 10", "assert digit_sum(0) == 0", {"call": "digit_sum(99)", "expected": 18}]
PROGRAM_TESTS = [{"stdin": "1234\n", "stdout": "10\n"}, {"stdin": "7", "stdout": "7"}]


def check(code: str, tests=None, **options):
    return run_tests(textwrap.dedent(code), tests or CALL_TESTS + PROGRAM_TESTS, config=FAST, **options)


# ----------------------------------------------------------------------------- parsing and comparing

def test_parse_tests_splits_expression_from_expected_value():
    cases = parse_tests([
        "assert f(1) == [1, 2]",
        "assert (3, 4) == g('x')",
        "assert h(2) is None\nassert not k(0)",
        "assert math.isclose(area(2), 12.566, rel_tol=1e-3)",
        "assert abs(area(1) - 3.14159) < 1e-4",
        "assert f(5) in [(1, 2), (2, 1)]",
        "assert is_even(4)",
        "assert f(1) == set()",
        {"stdin": "1\n", "stdout": "2\n"},
        {"call": "f(2)", "expected": {"a": [1]}},
    ])
    assert cases[0] == CallTest("f(1)", "equal", [1, 2])
    assert cases[1] == CallTest("g('x')", "equal", (3, 4))
    assert cases[2] == CallTest("h(2)", "equal", None) and cases[3] == CallTest("k(0)", "falsy")
    assert cases[4] == CallTest("area(2)", "close", 12.566, rel_tol=1e-3)
    assert cases[5] == CallTest("area(1)", "within", 3.14159, abs_tol=1e-4, strict=True)
    assert cases[6] == CallTest("f(5)", "member", [(1, 2), (2, 1)])
    assert cases[7] == CallTest("is_even(4)", "truthy")
    assert cases[8] == CallTest("f(1)", "equal", set())
    assert cases[9] == ProgramTest("1\n", "2\n")
    assert cases[10] == CallTest("f(2)", "equal", {"a": [1]})
    # The expected values stay on this side: the sandbox only ever receives the expressions.
    assert all("1, 2" not in c.expression for c in cases if isinstance(c, CallTest))


@pytest.mark.parametrize("tests, message", [
    ("assert f(1) == 1", "tests must be a list"),
    ([], "tests is empty"),
    (["x = 1"], r"tests\[0\]: only assert statements are supported, found Assign"),
    (["assert f(1) == g(2)"], r"tests\[0\]: one side of '==' must be a literal"),
    (["assert f(1) > 3"], r"tests\[0\]: unsupported assert form"),
    (["assert f(1) == 1 and f(2) == 2"], r"tests\[0\]: unsupported assert form"),
    (["assert f(1) =="], r"tests\[0\]: not valid Python"),
    ([{"stdin": 1, "stdout": "1"}], r"tests\[0\]: 'stdin' and 'stdout' must be strings"),
    ([{"call": "f(", "expected": 1}], r"tests\[0\]: 'call' must be one Python expression"),
    ([{"input": "1"}], r"tests\[0\]: expected \{'stdin', 'stdout'\}"),
])
def test_malformed_tests_are_refused_with_one_line(tests, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_tests(tests)
    assert "\n" not in str(error.value)


def test_values_compare_by_value_and_type():
    assert same_value(4, 4.0) and same_value([1, (2, 3)], [1, (2, 3)])
    assert not same_value(True, 1) and not same_value(1, True) and not same_value(0, False)
    assert not same_value([1, 2], (1, 2)) and not same_value("1", 1) and not same_value(None, 0)
    assert same_value({"a": [1]}, {"a": [1]}) and not same_value({"a": [1]}, {"a": [True]})
    assert decode_value({"tuple": [1, {"set": [2]}]}) == (1, {2})
    assert decode_value({"dict": [[{"tuple": [1, 2]}, "x"]]}) == {(1, 2): "x"}
    for bad in ({"weird": 1}, {"set": [[1]]}, {"dict": [[1]]}, {"tuple": 5}):
        with pytest.raises(ValueError):
            decode_value(bad)


def test_program_output_is_compared_per_line_with_whitespace_normalised():
    assert normalise_output("1  2 \n\n3\t4\n\n\n") == ["1 2", "", "3 4"]
    assert outputs_match("10", "10\n") and outputs_match(" 1 2\n", "1 2")
    assert not outputs_match("1\n2", "1 2") and not outputs_match("10\n11", "10")


# ----------------------------------------------------------------------------- honest solutions

def test_a_correct_solution_passes_every_kind_of_test():
    report = check(CORRECT)
    assert report.all_passed and report.status == "ok" and report.fraction == 1.0


def test_failures_are_told_apart():
    assert check("def digit_sum(n)\n    return 0").status == "compile_error"
    wrong = check("def digit_sum(n):\n    return 1\nif __name__ == '__main__':\n    print(1)")
    assert wrong.status == "wrong_answer" and wrong.passed == 0
    crash = check("def digit_sum(n):\n    return 1 // 0\nif __name__ == '__main__':\n    digit_sum(1)")
    assert crash.status == "runtime_error"
    slow = check("def digit_sum(n):\n    while True: pass", CALL_TESTS)
    assert slow.status == "timeout"
    big = check("def digit_sum(n):\n    return bytearray(10 ** 10)", CALL_TESTS)
    assert big.status == "memory"


def test_partial_credit_and_stop_at_first_failure():
    half = "def digit_sum(n):\n    return 0 if n == 0 else 10"
    report = check(half, ["assert digit_sum(0) == 0", "assert digit_sum(1234) == 10", "assert digit_sum(5) == 5"])
    assert report.passed == 2 and report.total == 3 and report.status == "wrong_answer"
    program = "print(10)"
    stopped = check(program, [{"stdin": "", "stdout": "3"}, {"stdin": "", "stdout": "10"}], stop_at_first_failure=True)
    assert [o.status for o in stopped.outcomes] == ["wrong_answer", "skipped"]


def test_one_hanging_call_costs_only_its_own_timeout():
    code = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(60)\n    return x"
    report = check(code, ["assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"])
    assert [o.status for o in report.outcomes] == ["ok", "timeout", "timeout"]
    assert report.wall_s < FAST.timeout_s * 2 + 2


def test_demo_code_under_main_guard_does_not_run_for_call_tests():
    code = "def f(x):\n    return x\nif __name__ == '__main__':\n    raise SystemExit(input())"
    assert check(code, ["assert f(1) == 1"]).all_passed


def test_setup_code_runs_after_the_solution():
    report = run_tests("def f(x):\n    return math.floor(x)", ["assert f(2.5) == 2"], setup="import math", config=FAST)
    assert report.all_passed


# ----------------------------------------------------------------------------- reward hacks

HACKS = {
    "exit 0 before the tests": "import sys\nsys.exit(0)",
    "os._exit(0) before the tests": "import os\nos._exit(0)",
    "always-equal object": """
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        def digit_sum(n):
            return Anything()
        if __name__ == '__main__':
            print(Anything())
        """,
    "int subclass that equals everything": """
        class Int(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        def digit_sum(n):
            return Int(0)
        """,
    "fake pass markers": """
        import sys
        for text in ('PASSED', 'ok', 'All tests passed', '{"i": 0, "v": 10}', '3/3 tests OK'):
            print(text)
            print(text, file=sys.stderr)
        def digit_sum(n):
            print('test passed')
            return None
        """,
    "sys.exit(0) inside the function": "import sys\ndef digit_sum(n):\n    sys.exit(0)",
    "os._exit(0) inside the function": "import os\ndef digit_sum(n):\n    os._exit(0)",
    "monkeypatch eval and the runner's encoder": """
        import builtins, sys
        runner = sys.modules['__main__']
        builtins.eval = lambda *args, **kwargs: True
        runner.tag_value = lambda value, depth=0: True
        def digit_sum(n):
            return -1
        """,
    "forge result records with the run's own nonce": """
        import os, sys
        frame = sys._getframe()
        while 'nonce' not in frame.f_locals:  # up to the runner's main(): its nonce and report channel
            frame = frame.f_back
        nonce, report = frame.f_locals['nonce'], frame.f_locals['report']
        for i in range(10):
            os.write(report, ('{"n": "%s", "i": %d, "v": true}\\n' % (nonce, i)).encode())
        os._exit(0)
        """,
    "print the expected output and crash": """
        import os
        print(10)
        os.kill(os.getpid(), 9)
        """,
    "tamper with the harness files": f"""
        import os
        for path in ({str(ROOT / 'sandbox' / 'inside.py')!r}, {str(ROOT / 'sandbox' / 'harness.py')!r},
                     os.__file__):
            try:
                open(path, 'a').write('\\nPASS = True\\n')
            except OSError:
                pass
        def digit_sum(n):
            return -1
        """,
}


@pytest.mark.parametrize("name", list(HACKS))
def test_reward_hacks_pass_no_test(name):
    watched = {p: file_digest(p) for p in (ROOT / "sandbox" / "inside.py", ROOT / "sandbox" / "harness.py")}
    report = check(HACKS[name])
    assert report.passed == 0, (name, report.outcomes)
    assert all(file_digest(p) == d for p, d in watched.items())


def test_expected_values_never_enter_the_sandbox():
    # The candidate searches every object it can reach for the expected value (the needle is built at
    # run time, not folded into a constant, so its own code does not count): nothing, because only the
    # expressions were sent.
    spy = """
        import gc
        def f():
            needle = '-'.join(['SECRET', 'EXPECTED', '7'])
            return sum(1 for o in gc.get_objects() if needle in repr(o)[:10000])
        """
    report = check(spy, ["assert f() == 'SECRET-EXPECTED-7'"])
    assert report.passed == 0 and report.outcomes[0].detail == "got 0"


def test_forged_records_count_only_as_the_candidates_own_answers():
    # Even with the run's nonce and the report channel in hand, a forged record is just the candidate
    # choosing a value: it is compared with the expected value like any other, and True is not 10.
    report = check(HACKS["forge result records with the run's own nonce"], CALL_TESTS)
    assert [o.detail for o in report.outcomes] == ["got True"] * 3
