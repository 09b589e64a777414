"""Start one sandboxed execution and watch it: capped reads, wall-clock deadlines, killing everything.

The parent enforces time (the kernel's CPU limit does not see a program that sleeps or is stopped) and
output size (read while it arrives, never buffered past the cap). Killing is total: bubblewrap runs the
program as the descendant of a new pid namespace's init, and killing bubblewrap's process group takes the
init down, which makes the kernel kill every process in the namespace, including ones that called
``setsid`` or double-forked. In ``rlimits-only`` mode a root host also sweeps the execution's private uid.
"""
from __future__ import annotations

import marshal
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from sandbox.config import SandboxConfig
from sandbox.isolation import bootstrap_command, interpreter, rlimits_only_environment

# After the program exits, how long to keep reading pipes that a left-over descendant may still hold.
LINGER_S = 0.2
# How often the watcher looks at the process while no pipe has anything to say.
POLL_S = 0.1
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Deadlines:
    """Wall-clock budget: ``first`` seconds until the first report line (or the end, for a program),
    ``step`` seconds from each report line to the next, never more than ``total`` seconds in all."""

    first: float
    step: float
    total: float


@dataclass(frozen=True)
class RawRun:
    """What came out of one execution, before any interpretation."""

    stdout: bytes
    stderr: bytes
    report: bytes
    exit_code: int | None  # 128 + N when killed by signal N
    timed_out: bool
    output_limited: bool
    wall_s: float


def run_bootstrap(job: dict, *, stdin: bytes, config: SandboxConfig, deadlines: Deadlines) -> RawRun:
    """Run the bootstrap on ``job`` (see sandbox/inside.py) and return its raw outputs."""
    job_fd = _memory_file(marshal.dumps(job), "sandbox-job")
    stdin_fd = _memory_file(stdin, "sandbox-stdin") if stdin else None
    report_r, report_w = os.pipe()
    workdir = None
    try:
        if config.isolation == "rlimits-only":
            workdir = tempfile.mkdtemp(prefix="sandbox-")
            if job.get("uid") is not None:
                os.chown(workdir, job["uid"], job["uid"])
        argv = bootstrap_command(config, job_fd, report_w, workdir)
        env = rlimits_only_environment(workdir) if workdir else {"PATH": "/usr/bin:/bin"}
        start = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(job_fd, report_w),
            cwd=workdir, env=env, start_new_session=True,  # its own process group, killed as one
        )
        os.close(report_w)
        report_w = -1
        try:
            return _watch(proc, report_r, config=config, deadlines=deadlines, start=start, uid=job.get("uid"))
        finally:
            if proc.returncode is None:  # an exception in the watcher: never leave it running
                _kill(proc)
    finally:
        for fd in (job_fd, stdin_fd, report_r, report_w):
            if fd is not None and fd >= 0:
                os.close(fd)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _watch(proc, report_fd, *, config, deadlines, start, uid) -> RawRun:
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", report_fd: "report"}
    buffers = {name: bytearray() for name in streams.values()}
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    deadline, hard_deadline = start + deadlines.first, start + deadlines.total
    timed_out = output_limited = lingering = False
    exited_at = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if now >= min(deadline, hard_deadline):
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > LINGER_S:
                lingering = True  # something outlived the program and holds a pipe: stop listening
                break
            # Wake up now and then even without output: a program that exited while a descendant holds
            # its pipes (rlimits-only mode) would otherwise only be noticed at the deadline.
            for key, _ in selector.select(min(min(deadline, hard_deadline) - now, POLL_S)):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                name = streams[key.fd]
                room = config.max_output_bytes - len(buffers[name])
                buffers[name] += chunk[:room]
                if len(chunk) > room:
                    output_limited = True
                    break
                if name == "report" and b"\n" in chunk:
                    deadline = time.monotonic() + deadlines.step  # progress: the next call's clock starts
            if output_limited:
                break
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
    if timed_out or output_limited or lingering:
        _kill(proc)
    else:
        try:
            proc.wait(timeout=max(0.0, min(deadline, hard_deadline) - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
    if config.isolation == "rlimits-only" and uid is not None:
        _sweep_uid(uid, config)  # descendants that left the process group
    code = proc.returncode
    return RawRun(
        stdout=bytes(buffers["stdout"]), stderr=bytes(buffers["stderr"]), report=bytes(buffers["report"]),
        exit_code=128 - code if code is not None and code < 0 else code,
        timed_out=timed_out, output_limited=output_limited, wall_s=time.monotonic() - start,
    )


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _sweep_uid(uid: int, config: SandboxConfig) -> None:
    # kill(-1, SIGKILL) from a process of that uid reaches every process of that uid (and nothing else):
    # what setsid or double-forking took out of the process group. Only possible for a root host.
    code = f"import os; os.setgroups([]); os.setresgid({uid},{uid},{uid}); os.setresuid({uid},{uid},{uid})\n" \
           "try: os.kill(-1, 9)\nexcept ProcessLookupError: pass"
    subprocess.run([interpreter(config), "-S", "-I", "-c", code], env={}, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)


def _memory_file(data: bytes, name: str) -> int:
    """A file descriptor of an in-memory file holding ``data`` (no disk, gone when the fd closes)."""
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
