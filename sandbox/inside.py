"""The trusted bootstrap that runs first inside every sandbox, before any untrusted code.

It is not imported by the host: :mod:`sandbox.launch` reads this file as text and runs it as
``python -S -I -B -c <source> JOB_FD REPORT_FD``, so it may use the standard library only (the sandbox
cannot see this project) and must stay small (it is parsed on every execution).

Order of work, and why:
1. read the job (``marshal``: written by the trusted host, builtin, fast) from ``JOB_FD`` and close it;
2. lower the kernel limits (address space, CPU seconds, processes, file size, open files, core dumps);
3. drop root for a throw-away uid when the host asked for it (bubblewrap run by root gives a real root
   process; the uid must change so that RLIMIT_NPROC applies and no capability is left);
4. compile the candidate's code (a compile error is reported on ``REPORT_FD`` before it can run);
5. ``program`` mode: close ``REPORT_FD`` and run the code as ``__main__`` on the real stdin/stdout;
   ``calls`` mode: run the code, then evaluate each test's expression and write its value, tagged by
   type, as one JSON line on ``REPORT_FD``.

Nothing in this process is secret from the candidate's code, which can read and patch all of it: the
verdict is safe because the expected values never enter the sandbox and the host compares outside.
"""
import marshal
import os
import resource
import sys

_LIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}
_MAX_DEPTH = 64
_SETUP_FAILED = 71  # exit status when the uid switch did not take: never run the code as root


def read_job(fd):
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    os.close(fd)
    return marshal.loads(data)


def apply_limits(limits):
    for name, value in limits.items():
        # CPU: the soft limit sends SIGXCPU, the hard one a second later SIGKILL.
        hard = value + 1 if name == "cpu" else value
        resource.setrlimit(_LIMITS[name], (value, hard))


def drop_privileges(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        os._exit(_SETUP_FAILED)


def write_record(fd, record):
    write_line(fd, encode_json(record))


def write_line(fd, text):
    data = (text + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def encode_json(value, depth=0):
    """JSON text of plain values (no ``json`` import: it costs ~10 ms per start)."""
    if depth > _MAX_DEPTH:
        raise ValueError("result nested too deeply")
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        text = repr(value)
        return {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}.get(text, text)
    if kind is str:
        return _quote(value)
    if kind is list:
        return "[" + ",".join(encode_json(item, depth + 1) for item in value) + "]"
    if kind is dict:
        return "{" + ",".join(_quote(key) + ":" + encode_json(item, depth + 1) for key, item in value.items()) + "}"
    raise TypeError(f"cannot encode {kind.__name__}")


def _quote(text):
    from _json import encode_basestring_ascii

    return encode_basestring_ascii(text)


def tag_value(value, depth=0):
    """The value as JSON-ready data that keeps its type: lists stay lists, the rest is tagged."""
    if depth > _MAX_DEPTH:
        raise ValueError("result nested too deeply")
    kind = type(value)  # exact types only: a subclass may override __eq__ or __repr__
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [tag_value(item, depth + 1) for item in value]
    if kind is tuple:
        return {"tuple": [tag_value(item, depth + 1) for item in value]}
    if kind in (set, frozenset):
        return {kind.__name__: [tag_value(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[tag_value(k, depth + 1), tag_value(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"unserializable result of type {kind.__name__}")


def describe(exc):
    try:
        return (type(exc).__name__ + ": " + str(exc))[:300]
    except BaseException:  # a hostile exception whose __str__ raises
        return "exception"


def fresh_module(name):
    module = type(sys)(name)
    module.__dict__["__builtins__"] = __builtins__
    sys.modules[name] = module
    sys.argv = ["solution.py"]
    return module.__dict__


def main():
    job = read_job(int(sys.argv[1]))
    report = int(sys.argv[2])
    nonce = job["nonce"]
    apply_limits(job["limits"])
    if job["uid"] is not None:
        drop_privileges(job["uid"])
    try:
        code = compile(job["code"], "solution.py", "exec", dont_inherit=True)
    except BaseException as exc:  # SyntaxError, ValueError (null bytes), MemoryError, RecursionError
        write_record(report, {"n": nonce, "compile_error": describe(exc)})
        os._exit(1)
    if job["mode"] == "program":
        namespace = fresh_module("__main__")
        os.close(report)
        del job
        exec(code, namespace)  # uncaught exceptions print a traceback and exit 1, as for `python solution.py`
        return
    calls = job["calls"]
    namespace = fresh_module("solution")  # not __main__: a demo under `if __name__ == "__main__"` stays off
    try:
        exec(code, namespace)
        if job["setup"]:
            exec(compile(job["setup"], "test_setup.py", "exec", dont_inherit=True), namespace)
    except BaseException as exc:  # SystemExit at import time included: no test ran
        write_record(report, {"n": nonce, "import_error": describe(exc)})
        os._exit(1)
    for index, expression in enumerate(calls):
        try:
            line = encode_json({"n": nonce, "i": index, "v": tag_value(eval(expression, namespace))})
        except BaseException as exc:  # SystemExit inside a test is a failed test, not a finished run
            line = encode_json({"n": nonce, "i": index, "e": describe(exc)})
        write_line(report, line)
    write_record(report, {"n": nonce, "done": True})
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    os._exit(0)  # skip atexit hooks the candidate may have registered


main()
