"""Running untrusted (model-written) Python: isolation, kernel limits, and a test harness whose verdict is
decided outside the untrusted process. See docs/sandbox.md.

    from sandbox import run_python, run_tests, SandboxPool
    run_python("print(input()[::-1])", stdin="abc\\n", timeout_s=2).stdout      # 'cba\\n'
    run_tests(code, ["assert digit_sum(123) == 6", {"stdin": "1 2\\n", "stdout": "3"}]).fraction
"""
from sandbox.config import SandboxConfig, SandboxUnavailable
from sandbox.execute import CallResult, ExecResult, run_calls, run_python
from sandbox.harness import FAILURE_ORDER, TestOutcome, TestReport, run_tests
from sandbox.isolation import ensure_available
from sandbox.pool import SandboxPool
from sandbox.testcases import CallTest, ProgramTest, parse_tests

__all__ = [
    "FAILURE_ORDER",
    "CallResult",
    "CallTest",
    "ExecResult",
    "ProgramTest",
    "SandboxConfig",
    "SandboxPool",
    "SandboxUnavailable",
    "TestOutcome",
    "TestReport",
    "ensure_available",
    "parse_tests",
    "run_calls",
    "run_python",
    "run_tests",
]
