"""Escape attempts: host files, network, the parent and other host processes, privileges, environment.

Each test lets the sandboxed code try, then checks the host side (a canary file, a listening server, a
sleeping process, a secret in the environment) rather than trusting what the code printed.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from sandbox import SandboxConfig, SandboxUnavailable, run_python
from tests.sandbox_support import ROOT, file_digest, no_stray_processes  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_stray_processes")

FAST = SandboxConfig(timeout_s=2.0, memory_mb=256)


def run(code: str, **options):
    return run_python(textwrap.dedent(code), config=FAST.with_options(**options))


def outcomes(result) -> dict:
    """The JSON dict the probing program printed as its last line."""
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


PROBE = """
import json, os, errno
def attempt(fn):
    try:
        value = fn()
        return 'ALLOWED' if value is None else f'ALLOWED: {str(value)[:60]}'
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
"""


def test_host_files_cannot_be_read_written_or_deleted(tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("host data")
    home_target = os.path.expanduser("~/sandbox-escape-test.txt")
    harness = ROOT / "sandbox" / "inside.py"
    watched = {p: file_digest(p) for p in (canary, "/etc/passwd", harness, ROOT / "rewards" / "code.py")}
    code = PROBE + f"""
canary, home, harness = {str(canary)!r}, {home_target!r}, {str(harness)!r}
print(json.dumps({{
    "read canary": attempt(lambda: open(canary).read()),
    "write canary": attempt(lambda: open(canary, 'w').write('pwned')),
    "delete canary": attempt(lambda: os.remove(canary)),
    "read passwd": attempt(lambda: open('/etc/passwd').read()),
    "write passwd": attempt(lambda: open('/etc/passwd', 'a').write('evil:x:0:0::/:/bin/sh')),
    "write home": attempt(lambda: open({home_target!r}, 'w').write('x')),
    "list /work": attempt(lambda: os.listdir('/work')),
    "write harness": attempt(lambda: open(harness, 'w').write('pwned')),
    "write /usr": attempt(lambda: open('/usr/lib/sandbox-evil', 'w').write('x')),
    "write stdlib": attempt(lambda: open(os.__file__, 'a').write('x')),
    "write /dev/shm": attempt(lambda: open('/dev/shm/x', 'w').write('x')),
}}))
"""
    seen = outcomes(run(code))
    assert not [k for k, v in seen.items() if v.startswith("ALLOWED")], seen
    assert canary.read_text() == "host data"
    assert all(file_digest(p) == digest for p, digest in watched.items())
    assert not os.path.exists(home_target)


def test_the_sandbox_sees_a_minimal_read_only_system():
    code = PROBE + """
print(json.dumps({
    "root": sorted(os.listdir('/')),
    "etc": attempt(lambda: sorted(os.listdir('/etc'))),
    "cwd": os.getcwd(),
    "write /tmp": attempt(lambda: open('/tmp/ok', 'w').write('fine')),
    "processes": sorted(p for p in os.listdir('/proc') if p.isdigit()),
}))
"""
    seen = outcomes(run(code))
    assert "work" not in seen["root"] and "home" not in seen["root"]
    assert seen["etc"] in ("ENOENT", "ALLOWED: ['ld.so.cache']")  # only the loader's cache, no host config
    assert seen["cwd"] == "/tmp" and seen["write /tmp"].startswith("ALLOWED")
    assert len(seen["processes"]) <= 3  # its own pid namespace: bubblewrap's init and the program


def test_no_privileges_inside():
    code = PROBE + """
status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
print(json.dumps({
    "uid": os.getuid(),
    "CapEff": status['CapEff'].strip(),
    "NoNewPrivs": status['NoNewPrivs'].strip(),
    "setuid 0": attempt(lambda: os.setuid(0)),
    "mount": attempt(lambda: os.system('mount -t tmpfs none /usr 2>/dev/null') or None) ,
    "chroot": attempt(lambda: os.chroot('/tmp')),
}))
"""
    seen = outcomes(run(code))
    assert seen["uid"] != 0
    assert int(seen["CapEff"], 16) == 0 and seen["NoNewPrivs"] == "1"
    assert seen["setuid 0"] == "EPERM" and seen["chroot"] == "EPERM"
    assert seen["mount"].startswith("ALLOWED: ") and seen["mount"] != "ALLOWED: 0"  # mount(8) itself failed


def test_loopback_server_of_the_host_receives_nothing():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    received = []

    def listen():
        try:
            conn, _ = server.accept()
            received.append(conn.recv(100))
        except OSError:
            pass

    listener = threading.Thread(target=listen)
    listener.start()
    code = PROBE + f"""
import socket
def connect():
    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)
    s.sendall(b'stolen secrets')
print(json.dumps({{"connect": attempt(connect)}}))
"""
    seen = outcomes(run(code))
    listener.join()
    server.close()
    assert seen["connect"] == "ECONNREFUSED"  # the sandbox's own, empty loopback
    assert received == []


def test_no_route_to_the_outside():
    code = PROBE + """
import socket
def tcp():
    socket.create_connection(('1.1.1.1', 53), timeout=1)
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))
def dns():
    socket.getaddrinfo('pypi.org', 443)
def interfaces():
    return sorted(name for _, name in socket.if_nameindex())
print(json.dumps({"tcp": attempt(tcp), "udp": attempt(udp), "interfaces": attempt(interfaces), "dns": attempt(dns)}))
"""
    seen = outcomes(run(code))
    assert seen["tcp"] == "ENETUNREACH" and seen["udp"] == "ENETUNREACH"
    assert seen["interfaces"] == "ALLOWED: ['lo']"
    assert not seen["dns"].startswith("ALLOWED")


def test_killing_the_parent_and_everything_reachable_leaves_the_host_alive():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    # A host process that is not ours (own session, not our child) and this test process's own parent: a
    # `kill -9 -1` that escaped the sandbox would reach both (same host user), and a killed parent would
    # leave this process reparented.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    parent = os.getppid()
    try:
        code = PROBE + """
import signal, subprocess, sys
print(json.dumps({
    "kill parent": attempt(lambda: os.kill(os.getppid(), signal.SIGKILL)),
    "kill pid 1": attempt(lambda: os.kill(1, signal.SIGKILL)),
}), flush=True)
subprocess.run(['/bin/sh', '-c', 'kill -9 -1'])  # kills every process it may: here, this program too
os.kill(-1, signal.SIGKILL)
"""
        result = run(code)
        assert bystander.poll() is None  # a host process of the same host user survived
        assert result.exit_code == 137 and not result.timed_out  # the program killed itself, nothing else
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        assert seen["kill parent"] == "EPERM" and seen["kill pid 1"] == "EPERM"
        assert stranger.poll() is None  # a host process in another session survived
        assert os.getppid() == parent  # our parent was not killed (we were not reparented) ...
        os.kill(parent, 0)  # ... and is still there to signal (ProcessLookupError if it is gone)
        assert outcomes(run(PROBE + "print(json.dumps({'ok': 'yes'}))")) == {"ok": "yes"}  # sandbox still works
    finally:
        for proc in (bystander, stranger):
            proc.kill()
            proc.wait()


def test_signals_to_host_pids_cannot_reach_them():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        code = PROBE + f"print(json.dumps({{'kill host pid': attempt(lambda: os.kill({sleeper.pid}, 9))}}))"
        seen = outcomes(run(code))
        assert seen["kill host pid"] in ("ESRCH", "EPERM")  # not even visible from its pid namespace
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_environment_is_cleared(monkeypatch):
    monkeypatch.setenv("R1_FAKE_SECRET", "hunter2-do-not-leak")
    code = PROBE + """
def read(path):
    return open(path, 'rb').read().decode(errors='replace')
print(json.dumps({
    "environ": dict(os.environ),
    "self environ": attempt(lambda: read('/proc/self/environ')),
    "pid 1 environ": attempt(lambda: read('/proc/1/environ')),
}))
"""
    result = run(code)
    assert "hunter2" not in result.stdout and "hunter2" not in result.stderr
    seen = outcomes(result)
    assert set(seen["environ"]) <= {"PATH", "HOME", "LANG", "PYTHONIOENCODING", "PWD", "LC_CTYPE"}


def test_rlimits_only_mode_is_weaker_but_clears_the_environment_and_keeps_limits(monkeypatch):
    monkeypatch.setenv("R1_FAKE_SECRET", "hunter2-do-not-leak")
    weak = FAST.with_options(isolation="rlimits-only", timeout_s=1.0)
    result = run_python("import os; print(sorted(os.environ))", config=weak)
    assert result.ok and "R1_FAKE_SECRET" not in result.stdout
    assert run_python("x = bytearray(4 * 1024 ** 3)", config=weak).memory_exceeded
    hung = run_python("import time; time.sleep(30)", config=weak)
    assert hung.timed_out and hung.wall_s < 4
    escaped = run_python(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nprint('bye')", config=weak
    )
    assert escaped.ok  # the setsid child is swept by uid (root host) or by its group


def test_missing_bubblewrap_is_refused_with_one_clear_line():
    config = SandboxConfig(bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable) as error:
        run_python("print(1)", config=config)
    message = str(error.value)
    assert "\n" not in message and "bubblewrap" in message and "rlimits-only" in message


def test_config_is_validated_and_picklable():
    config = SandboxConfig(timeout_s=1.5, ro_binds=("/opt",))
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(ValueError, match="SandboxConfig.timeout_s must be a positive number"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="SandboxConfig.isolation must be one of"):
        SandboxConfig(isolation="none")
    with pytest.raises(ValueError, match="unknown sandbox option 'timeout'"):
        run_python("pass", timeout=3)
    with pytest.raises(ValueError, match="SandboxConfig.memory_mb must be a positive int"):
        SandboxConfig(memory_mb=1.5)


def test_works_from_a_worker_thread_without_signals():
    # Ray reward actors call rewards from threads: nothing here may rely on signal.alarm or the main thread.
    results = []
    thread = threading.Thread(target=lambda: results.append(run_python("print(6 * 7)", config=FAST)))
    previous = signal.getsignal(signal.SIGALRM)
    thread.start()
    thread.join()
    assert results[0].ok and results[0].stdout.strip() == "42"
    assert signal.getsignal(signal.SIGALRM) == previous
