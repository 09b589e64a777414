"""Run untrusted Python once: as a program on stdin/stdout, or as a module whose test calls are evaluated."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from sandbox.config import SandboxConfig, resolve_config
from sandbox.isolation import ensure_available, kernel_limits, sandbox_uid
from sandbox.process import Deadlines, RawRun, run_bootstrap

# Added to the first deadline for starting bubblewrap and the interpreter (~20 ms idle, more under load),
# so a busy host does not turn into spurious timeouts.
STARTUP_ALLOWANCE_S = 0.5


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one execution.

    ``exit_code`` is 128 + N when the process was killed by signal N (e.g. 137 after a timeout kill);
    ``compile_error`` is set when the code did not compile (it then never ran); ``memory_exceeded`` when
    it died of a failed allocation under the memory limit; ``output_limit_exceeded`` when stdout, stderr or
    the report channel passed ``max_output_bytes`` (the process was killed and the output cut there).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    memory_exceeded: bool
    output_limit_exceeded: bool
    wall_s: float
    compile_error: str | None = None

    @property
    def ok(self) -> bool:
        """It compiled, ran to the end within every limit and exited with status 0."""
        return (self.exit_code == 0 and not self.timed_out and not self.output_limit_exceeded
                and self.compile_error is None)


@dataclass(frozen=True)
class CallResult:
    """What the sandbox reported for one test call: a value (tagged JSON, still to be decoded on the
    trusted side) or an error text; neither when the call never finished."""

    value: Any = None
    error: str | None = None
    finished: bool = False


def run_python(code: str, *, stdin: str = "", config: SandboxConfig | None = None, **options) -> ExecResult:
    """Run ``code`` as ``python solution.py`` in the sandbox with ``stdin``; never raises for anything
    the code does. ``options`` override ``config`` fields (``timeout_s=2``, ``memory_mb=256``, ...).

    Raises :class:`~sandbox.config.SandboxUnavailable` when the configured isolation cannot run here.
    """
    config = resolve_config(config, options)
    ensure_available(config)
    nonce = secrets.token_hex(16)
    job = _job(config, nonce, mode="program", code=code)
    budget = config.timeout_s + STARTUP_ALLOWANCE_S
    raw = run_bootstrap(job, stdin=stdin.encode("utf-8", errors="surrogateescape"), config=config,
                        deadlines=Deadlines(first=budget, step=budget, total=budget))
    records = read_records(raw.report, nonce)
    return _exec_result(raw, compile_error=_first(records, "compile_error"))


def run_calls(
    code: str, expressions: Sequence[str], *, setup: str = "", config: SandboxConfig | None = None, **options
) -> tuple[ExecResult, list[CallResult], str | None]:
    """Load ``code`` as a module (then ``setup``), evaluate each expression in its namespace, and report
    each value by type. Returns ``(execution, one CallResult per expression, import error or None)``.

    Each call gets ``timeout_s`` of wall-clock time from the previous one's report; the first also covers
    loading the module. Values are decoded by the caller (see :mod:`sandbox.values`).
    """
    config = resolve_config(config, options)
    ensure_available(config)
    nonce = secrets.token_hex(16)
    runs = max(1, len(expressions))
    job = _job(config, nonce, mode="calls", code=code, calls=list(expressions), setup=setup, runs=runs)
    first = config.timeout_s + STARTUP_ALLOWANCE_S
    raw = run_bootstrap(job, stdin=b"", config=config,
                        deadlines=Deadlines(first=first, step=config.timeout_s, total=first + config.timeout_s * runs))
    records = read_records(raw.report, nonce)
    results = [CallResult() for _ in expressions]
    for record in records:
        index = record.get("i")
        if type(index) is int and 0 <= index < len(results) and not results[index].finished:
            if "v" in record:
                results[index] = CallResult(value=record["v"], finished=True)
            elif "e" in record:
                results[index] = CallResult(error=str(record["e"]), finished=True)
    memory = any(r.error and r.error.startswith("MemoryError") for r in results)
    execution = _exec_result(raw, compile_error=_first(records, "compile_error"), memory=memory)
    return execution, results, _first(records, "import_error")


def read_records(report: bytes, nonce: str) -> list[dict]:
    """The JSON records on the report channel that carry this run's nonce; anything else is ignored.

    The channel is written from inside the sandbox, so it is parsed defensively: bad lines, wrong nonces,
    huge or deeply nested values are dropped, never raised.
    """
    records = []
    for line in report.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError, MemoryError):
            continue
        if isinstance(record, dict) and record.get("n") == nonce:
            records.append(record)
    return records


def ran_out_of_memory(stderr: str) -> bool:
    """Whether the program died of a failed allocation (Python's MemoryError as its last words)."""
    tail = stderr.rstrip().splitlines()[-3:]
    return any("MemoryError" in line or "Cannot allocate memory" in line for line in tail)


def _job(config: SandboxConfig, nonce: str, *, mode: str, code: str, calls=(), setup: str = "", runs: int = 1):
    return {"nonce": nonce, "mode": mode, "code": code, "calls": list(calls), "setup": setup,
            "limits": kernel_limits(config, runs=runs), "uid": sandbox_uid()}


def _exec_result(raw: RawRun, *, compile_error: str | None, memory: bool = False) -> ExecResult:
    stderr = raw.stderr.decode("utf-8", errors="replace")
    return ExecResult(
        stdout=raw.stdout.decode("utf-8", errors="replace"), stderr=stderr, exit_code=raw.exit_code,
        timed_out=raw.timed_out, memory_exceeded=memory or (not raw.timed_out and ran_out_of_memory(stderr)),
        output_limit_exceeded=raw.output_limited, wall_s=raw.wall_s,
        compile_error=str(compile_error) if compile_error is not None else None,
    )


def _first(records: list[dict], key: str):
    return next((r[key] for r in records if key in r), None)
