"""Resource attacks on the sandbox: every one ends within its limit, and leaves nothing running.

All tests are real: bubblewrap, real kernel limits, real processes (no mocks). Timeouts are 1 s so the
file stays fast; the assertion bounds leave room for a busy 2-core machine.
"""
from __future__ import annotations

import textwrap
import time

import pytest

from sandbox import SandboxConfig, run_python
from sandbox.execute import STARTUP_ALLOWANCE_S
from tests.sandbox_support import no_stray_processes  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_stray_processes")

FAST = SandboxConfig(timeout_s=1.0, memory_mb=256)
# Wall-clock bound for a run killed at its timeout: the limit, the start-up allowance, and slack for a
# loaded machine. The point is "bounded", not "exact".
KILLED_WITHIN_S = FAST.timeout_s + STARTUP_ALLOWANCE_S + 2.0


def run(code: str, **options):
    return run_python(textwrap.dedent(code), config=FAST.with_options(**options))


def test_a_normal_program_runs_and_reports_its_output():
    result = run_python("print(input()[::-1])", stdin="abc\n", config=FAST)
    assert result.ok and result.stdout == "cba\n" and result.stderr == ""
    result = run_python("import sys; print(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3\n", config=FAST)
    assert result.ok and result.stdout.strip() == "6" and result.wall_s < 2


def test_infinite_loop_is_killed_at_the_timeout():
    result = run("while True:\n    pass\n")
    assert result.timed_out and not result.ok
    assert result.wall_s < KILLED_WITHIN_S


def test_sleeping_past_the_timeout_is_killed():
    start = time.monotonic()
    result = run("import time\ntime.sleep(60)\n")
    assert result.timed_out and result.exit_code == 137
    assert time.monotonic() - start < KILLED_WITHIN_S


def test_cpu_limit_kills_a_busy_loop_that_ignores_sigxcpu():
    # The kernel's CPU-seconds limit: SIGXCPU is ignored, so the hard limit's SIGKILL ends it, before the
    # generous wall-clock timeout would.
    result = run(
        """
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
        """,
        timeout_s=20.0, cpu_time_s=1.0,
    )
    assert not result.timed_out and result.exit_code == 137
    assert result.wall_s < 10


def test_fork_bomb_is_capped_and_cleaned_up():
    result = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    assert result.timed_out and not result.ok
    assert result.wall_s < KILLED_WITHIN_S + 2
    # no_stray_processes: every forked process is gone with the sandbox's pid namespace


def test_process_limit_caps_the_number_of_children():
    result = run(
        """
        import os, time
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as exc:
            print(children, exc.errno)
        """,
        max_processes=8,
    )
    children, errno = map(int, result.stdout.split())
    assert children < 8 and errno == 11  # EAGAIN from RLIMIT_NPROC
    assert result.exit_code == 0  # the parent exits; the sleeping children die with the namespace


def test_memory_bomb_fails_allocation_under_the_limit():
    result = run("x = bytearray(4 * 1024 ** 3)\n")
    assert result.memory_exceeded and result.exit_code == 1 and not result.ok


def test_gradual_memory_growth_is_stopped():
    result = run("chunks = []\nwhile True:\n    chunks.append(b'x' * 10 ** 6)\n")
    assert result.memory_exceeded and not result.timed_out


def test_huge_stdout_is_cut_at_the_cap_while_read():
    result = run("while True:\n    print('x' * 1000)\n", max_output_bytes=100_000)
    assert result.output_limit_exceeded and not result.ok
    assert len(result.stdout) <= 100_000
    assert result.wall_s < KILLED_WITHIN_S


def test_huge_stderr_is_cut_too():
    result = run("import sys\nwhile True:\n    sys.stderr.write('e' * 4096)\n", max_output_bytes=50_000)
    assert result.output_limit_exceeded and len(result.stderr) <= 50_000


def test_disk_filling_is_limited_by_file_size_and_workdir_size():
    result = run(
        """
        import errno
        try:
            with open('big', 'wb') as f:
                f.write(b'x' * (64 << 20))
        except OSError as exc:
            print('file', errno.errorcode[exc.errno])
        written = 0
        try:
            for i in range(100):
                with open(f'part{i}', 'wb') as f:
                    f.write(b'y' * (4 << 20))
                written += 4
        except OSError as exc:
            print('total', errno.errorcode[exc.errno], written)
        """,
        max_file_mb=8, workdir_mb=16,
    )
    lines = result.stdout.split("\n")
    assert lines[0] == "file EFBIG"  # RLIMIT_FSIZE
    kind, code, written = lines[1].split()
    assert code == "ENOSPC" and int(written) <= 16  # the private /tmp is a 16 MiB tmpfs


def test_open_file_limit():
    result = run(
        """
        files = []
        try:
            while True:
                files.append(open('/dev/null'))
        except OSError as exc:
            print(len(files), exc.errno)
        """,
        max_open_files=32,
    )
    count, errno = map(int, result.stdout.split())
    assert count < 32 and errno == 24  # EMFILE


def test_stopping_itself_is_still_killed_at_the_timeout():
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n")
    assert result.timed_out and result.wall_s < KILLED_WITHIN_S


def test_ignoring_sigterm_does_not_help():
    result = run("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n")
    assert result.timed_out and result.exit_code == 137


def test_daemonised_grandchild_does_not_outlive_the_run():
    # Double fork + setsid: the classic escape from a process group. The grandchild keeps writing; the
    # run must still end promptly and the grandchild must be gone (checked by no_stray_processes).
    result = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    time.sleep(0.05)
            os._exit(0)
        print('parent done')
        """
    )
    assert result.ok and result.stdout.strip() == "parent done"
    assert result.wall_s < 2.5


def test_closing_its_pipes_and_hanging_is_still_a_timeout():
    result = run("import os, time\nos.close(1)\nos.close(2)\ntime.sleep(60)\n")
    assert result.timed_out and result.wall_s < KILLED_WITHIN_S


def test_exit_codes_and_signals_are_reported():
    assert run("import sys\nsys.exit(3)\n").exit_code == 3
    assert run("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n").exit_code == 128 + 11
    assert run("raise ValueError('boom')\n").exit_code == 1
