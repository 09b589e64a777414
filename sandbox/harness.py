"""Run a solution against its test cases and decide, on the trusted side, which ones pass.

A test passes only when the sandboxed run finished it within every limit and the host's own comparison
accepted the result: program tests compare stdout (whitespace-normalised per line) after an exit status
of 0; call tests decode the value the sandbox reported and apply the check that never left the host (see
:mod:`sandbox.testcases`). A test whose result never arrived (the program exited, was killed, or hung)
fails, whatever the program printed or returned as its exit status.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sandbox.config import SandboxConfig, resolve_config
from sandbox.execute import CallResult, ExecResult, run_calls, run_python
from sandbox.testcases import CallTest, ProgramTest, parse_tests
from sandbox.values import UndecodableValue, decode_value, outputs_match

# When tests fail for different reasons, the summary names the first of these that occurred: the
# causes that say most about the solution (it never ran, it blew a limit) before plain wrong answers.
FAILURE_ORDER = ("compile_error", "memory", "timeout", "output_limit", "runtime_error", "exited_early",
                 "unserializable", "wrong_answer", "skipped")


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict: ``status`` is ``ok`` or one of :data:`FAILURE_ORDER`."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class TestReport:
    """All verdicts of one solution, in the order of its tests."""

    outcomes: tuple[TestOutcome, ...]
    wall_s: float

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total

    @property
    def status(self) -> str:
        """``ok`` when every test passed, else the most telling failure (see :data:`FAILURE_ORDER`)."""
        failures = {o.status for o in self.outcomes if not o.passed}
        return next((s for s in FAILURE_ORDER if s in failures), "ok") if failures else "ok"


def run_tests(
    code: str,
    tests: Any,
    *,
    setup: str = "",
    config: SandboxConfig | None = None,
    stop_at_first_failure: bool = False,
    **options,
) -> TestReport:
    """Run ``code`` against ``tests`` (a sample's ``tests`` field, see :func:`sandbox.testcases.parse_tests`).

    Call tests run in one execution (the module is loaded once, ``setup`` runs after it, then each call);
    each program test is its own execution. A compile error fails every test without running more;
    ``stop_at_first_failure`` skips what is left after any failure (for all-or-nothing scoring).
    ``options`` override ``config`` fields. Raises ``ValueError`` for malformed tests.
    """
    config = resolve_config(config, options)
    cases = parse_tests(tests)
    start = time.monotonic()
    outcomes: list[TestOutcome | None] = [None] * len(cases)
    calls = [(i, case) for i, case in enumerate(cases) if isinstance(case, CallTest)]
    if calls:
        execution, results, import_error = run_calls(code, [c.expression for _, c in calls], setup=setup, config=config)
        for (index, case), result in zip(calls, results):
            outcomes[index] = call_outcome(case, result, execution, import_error)
    for index, case in enumerate(cases):
        if outcomes[index] is not None or not isinstance(case, ProgramTest):
            continue
        if _should_stop(outcomes, stop_at_first_failure):
            break
        outcomes[index] = program_outcome(case, run_python(code, stdin=case.stdin, config=config))
    compile_error = next((o for o in outcomes if o is not None and o.status == "compile_error"), None)
    filler = compile_error or TestOutcome("skipped")
    return TestReport(tuple(o or filler for o in outcomes), wall_s=time.monotonic() - start)


def program_outcome(case: ProgramTest, result: ExecResult) -> TestOutcome:
    """Verdict of one program run against its expected output."""
    if result.compile_error is not None:
        return TestOutcome("compile_error", result.compile_error)
    limit = limit_outcome(result)
    if limit is not None:
        return limit
    if result.exit_code != 0:
        return TestOutcome("runtime_error", f"exit status {result.exit_code}: {_last_line(result.stderr)}")
    if outputs_match(result.stdout, case.stdout):
        return TestOutcome("ok")
    return TestOutcome("wrong_answer", f"got {result.stdout[:80]!r}")


def call_outcome(case: CallTest, result: CallResult, execution: ExecResult, import_error: str | None) -> TestOutcome:
    """Verdict of one call from what the sandbox reported for it and how the execution ended."""
    if execution.compile_error is not None:
        return TestOutcome("compile_error", execution.compile_error)
    if result.finished and result.error is not None:
        return TestOutcome(_error_status(result.error), result.error)
    if result.finished:
        try:
            value = decode_value(result.value)
        except UndecodableValue as exc:
            return TestOutcome("unserializable", str(exc))
        return TestOutcome("ok") if case.accepts(value) else TestOutcome("wrong_answer", f"got {value!r}"[:120])
    # No result for this call: the run ended (or was ended) before it.
    limit = limit_outcome(execution)
    if limit is not None:
        return limit
    if import_error is not None:
        return TestOutcome(_error_status(import_error), import_error)
    return TestOutcome("exited_early", f"exit status {execution.exit_code}")


def limit_outcome(execution: ExecResult) -> TestOutcome | None:
    """The failure when the execution hit a limit (time, output, memory), else None."""
    if execution.timed_out:
        return TestOutcome("timeout")
    if execution.output_limit_exceeded:
        return TestOutcome("output_limit")
    if execution.memory_exceeded:
        return TestOutcome("memory")
    return None


def _error_status(error: str) -> str:
    if error.startswith("MemoryError"):
        return "memory"
    if error.startswith("SystemExit"):
        return "exited_early"
    if error.startswith("TypeError: unserializable"):
        return "unserializable"
    return "runtime_error"


def _should_stop(outcomes: list[TestOutcome | None], stop_at_first_failure: bool) -> bool:
    failed = [o for o in outcomes if o is not None and not o.passed]
    return any(o.status == "compile_error" for o in failed) or (stop_at_first_failure and bool(failed))


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:120] if lines else ""
