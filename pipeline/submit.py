"""`r1 submit` and `r1 jobs`: run a recipe command as a Ray job on a cluster, through Ray's Job Submission API.

What a submission sends: the project as the job's working dir (venvs, runs, caches and git left out), a
runtime env built from the project (the nodes' own environment of the project, or a pip env Ray builds from
``pyproject.toml``), and an entrypoint that runs ``python -m pipeline.cli <command> -c <config> <overrides>``
with an absolute ``run.output_dir``: the job's working dir is Ray's temporary copy, deleted after the job,
so a relative run dir would put every artifact where it is lost. Users' reward modules that the config names
and that live outside the project travel as the runtime env's ``py_modules`` (:func:`shipped_modules`).
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Never shipped: environments, run outputs, caches, VCS data (Ray refuses a working dir over 100 MB).
WORKING_DIR_EXCLUDES = [".venv", "venv", "runs", ".git", ".cache", "**/__pycache__", "*.egg-info", ".pytest_cache",
                        ".ruff_cache", "build", "dist", ".whl", ".gl"]
TOKEN_PLACES = "$RAY_AUTH_TOKEN, the file named by $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """A submission problem, said in one line."""


# ---- Ray's token authentication -----------------------------------------------------------------------------

def auth_token_source(environ=os.environ, home: Path | None = None) -> str | None:
    """Where a Ray auth token is found, in the order Ray's own loader reads them, or None."""
    if environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return path
    default = (home or Path.home()) / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def enable_token_auth(environ=os.environ) -> str | None:
    """Turn on Ray's token mode when a token is available and the mode is not set, as ``ray`` commands do
    (a Ray 2.60 head enables tokens, but a client sends one only with ``RAY_AUTH_MODE=token``). Returns
    where the token was found."""
    source = auth_token_source(environ)
    if source and "RAY_AUTH_MODE" not in environ:
        environ["RAY_AUTH_MODE"] = "token"
        if environ is os.environ and "ray._raylet" in sys.modules:  # Ray caches its config: make it re-read
            from ray._raylet import Config

            Config.initialize("")
    return source


def job_client(address: str | None):
    """A :class:`ray.job_submission.JobSubmissionClient` for ``address`` (default ``$RAY_ADDRESS`` when it is
    a dashboard URL, else the local head's dashboard), with Ray's token when the cluster wants one."""
    address = address or _dashboard_address()
    enable_token_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        found = auth_token_source()
        why = f"the token in {found} was refused" if found else "no token found"
        raise SubmitError(f"Ray at {address} requires token authentication and {why}: Ray reads {TOKEN_PLACES} "
                          "(copy the head node's ~/.ray/auth_token)") from exc
    except ConnectionError as exc:
        raise SubmitError(f"no Ray dashboard answers at {address} (start one with `ray start --head`, or pass "
                          f"--address http://HEAD:8265): {str(exc).splitlines()[0]}") from exc


def _dashboard_address() -> str:
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith("http") else DEFAULT_ADDRESS


# ---- what a job runs ----------------------------------------------------------------------------------------

def pyproject_requirements(root: Path = ROOT, extra: str | None = None) -> list[str]:
    """The project's dependencies from ``pyproject.toml`` (plus those of ``extra``, e.g. ``gpu``)."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    if extra:
        deps += project.get("optional-dependencies", {}).get(extra, [])
    return deps


def job_runtime_env(cfg, root: Path = ROOT) -> dict:
    """The job's runtime env: the working dir (minus what never travels), the config's env vars
    (``cluster.job.env_vars``, the cluster's paths; never the submitter's own environment) and, for
    ``cluster.job.environment: pyproject``, pip requirements built from ``pyproject.toml``."""
    job = cfg.cluster.job
    # Only the cluster's own paths (cluster.job.env_vars): the submitter's HF_HOME / R1_CACHE name folders on the
    # submitting machine, which the nodes may not have (their defaults apply unless the config says otherwise).
    env_vars = {"PYTHONUNBUFFERED": "1", **job.env_vars}
    runtime_env: dict = {"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES + list(job.excludes),
                         "env_vars": env_vars}
    py_modules = shipped_modules(cfg, root)
    if py_modules:
        runtime_env["py_modules"] = py_modules
    if job.environment == "pyproject":
        c = cfg.cluster
        on_gpu = any(getattr(c, r).num_gpus for r in ("rollout", "trainer", "reference"))
        runtime_env["pip"] = pyproject_requirements(root, "gpu" if on_gpu else "cpu") + list(job.pip)
    elif job.pip:
        raise SubmitError("cluster.job.pip is for cluster.job.environment=pyproject (an existing environment is "
                          "used as it is)")
    return runtime_env


# Environment variables that name this machine's folders (model caches): the nodes have their own.
LOCAL_PATH_VARS = ("R1_CACHE", "HF_HOME")


def unforwarded_paths(cfg, environ=os.environ) -> list[str]:
    """The submitter's cache variables (:data:`LOCAL_PATH_VARS`) that the job does not get, because
    ``cluster.job.env_vars`` does not set them: the nodes use their own defaults for those."""
    return [k for k in LOCAL_PATH_VARS if environ.get(k) and k not in cfg.cluster.job.env_vars]


# ---- users' modules: what the config names, shipped with the job ---------------------------------------------

def named_modules(cfg) -> list[tuple[str, str]]:
    """``(module, where)`` for every module the config names: the module part of each ``module:function`` reward
    item (``rewards.items``, ``general_rl.rewards``, any list of reward items) and each ``rewards.plugins`` entry."""
    found: dict[str, str] = {}

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, dict) and {"name", "weight"} <= set(item) and ":" in str(item["name"]):
                    found.setdefault(str(item["name"]).partition(":")[0], f"{where}.{i}")
                else:
                    walk(item, f"{where}.{i}")

    walk(cfg.model_dump(mode="json"), "")
    for i, module in enumerate(cfg.rewards.plugins):
        found.setdefault(module, f"rewards.plugins.{i}")
    return list(found.items())


def module_location(module: str) -> Path | None:
    """The file (a module) or folder (a package) of ``module``'s top-level name, found as an import here would
    find it (the working directory, ``PYTHONPATH``, the environment); None if it is not importable here."""
    import importlib.util

    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    if spec.origin and spec.origin not in ("built-in", "frozen") and Path(spec.origin).is_file():
        return Path(spec.origin).resolve()
    return Path(sys.prefix)  # built in: part of the environment


def _in_environment(path: Path) -> bool:
    """Whether ``path`` belongs to the Python environment (site-packages, the stdlib): the nodes have their own."""
    import site
    import sysconfig

    homes = {sys.prefix, sys.base_prefix, sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    return any(path.is_relative_to(Path(h).resolve()) for h in homes if h)


def shipped_modules(cfg, root: Path = ROOT) -> list[str]:
    """The ``py_modules`` of the job's runtime env: the config's modules that live outside the project (the
    working dir) and the environment (a module file or its top-level package folder), then
    ``cluster.job.py_modules``. A named module not importable here, or a listed path that does not exist, is a
    :class:`SubmitError`, before anything is submitted."""
    shipped: list[str] = []
    for module, where in named_modules(cfg):
        path = module_location(module)
        if path is None:
            raise SubmitError(f"{where}: module {module!r} is not importable here (the working directory "
                              f"{os.getcwd()}, PYTHONPATH, the environment), so it cannot be shipped with the job; "
                              "run r1 submit where it imports, or list its folder in cluster.job.py_modules")
        if not path.is_relative_to(root.resolve()) and not _in_environment(path):
            shipped.append(_as_folder(path))
    for entry in cfg.cluster.job.py_modules:
        if "://" in entry:  # a URI Ray fetches itself (a wheel, a zip)
            shipped.append(entry)
            continue
        path = Path(entry).expanduser().resolve()
        if not path.exists():
            raise SubmitError(f"cluster.job.py_modules: {entry} not found (from {os.getcwd()})")
        shipped.append(_as_folder(path))
    return list(dict.fromkeys(shipped))


_staging: Path | None = None


def _as_folder(path: Path) -> str:
    """A ``py_modules`` entry for ``path``: a package folder as it is; a one-file module ``name.py`` as a folder
    ``name/`` holding it as ``__init__.py`` (imported the same way: Ray 2.60's job client uploads a ``.py`` entry
    as if it were a folder, and fails), staged in a temporary folder removed at exit."""
    global _staging
    if path.is_dir() or path.suffix != ".py":
        return str(path)
    import atexit
    import shutil
    import tempfile

    if _staging is None:
        _staging = Path(tempfile.mkdtemp(prefix="r1-py-modules-"))
        atexit.register(shutil.rmtree, _staging, True)
    folder = _staging / path.stem
    folder.mkdir(exist_ok=True)
    shutil.copyfile(path, folder / "__init__.py")
    return str(folder)


def durable_output_dir(output_dir: str, base: Path | None = None) -> str:
    """``run.output_dir`` as the absolute path the job writes to (relative paths: from where `r1 submit` runs)."""
    path = Path(output_dir).expanduser()
    return str(path if path.is_absolute() else (base or Path.cwd()) / path)


def is_override(arg: str) -> bool:
    """A ``key.sub=value`` override (not an option such as ``--until``)."""
    return "=" in arg and not arg.startswith("-")


def job_arguments(job: list[str], config: str | None, output_dir: str, root: Path = ROOT) -> list[str]:
    """``r1`` arguments of the job: the command, the config as a path inside the working dir, the command's
    options, then the overrides, the absolute run dir last (it wins over a relative one given before)."""
    command, rest = job[0], job[1:]
    args = [command]
    if config:
        path = Path(config).resolve()
        try:
            args += ["-c", str(path.relative_to(root))]
        except ValueError:
            raise SubmitError(f"-c {config}: the config must be inside the project ({root}), which is the job's "
                              "working dir") from None
    return (args + [a for a in rest if not is_override(a)] + [a for a in rest if is_override(a)]
            + [f"run.output_dir={output_dir}"])


def entrypoint(cfg, args: list[str], python: str | None = None) -> str:
    """The job's shell command. An existing environment runs its interpreter by absolute path (never the
    ``python`` that happens to be on a node's PATH) and says so in one line when a node lacks it; a pyproject
    env runs the interpreter of the env Ray built."""
    quoted = " ".join(shlex.quote(a) for a in args)
    if cfg.cluster.job.environment == "pyproject":
        return f"python -m pipeline.cli {quoted}"
    python = python or cfg.cluster.job.python or sys.executable
    q = shlex.quote(python)
    check = (f"test -x {q} || {{ echo 'r1: error: cluster.job.python={python} is not an interpreter on this node "
             f"(run make setup at that path on every node, or set cluster.job.python)' >&2; exit 2; }}")
    return f"{check}; exec {q} -m pipeline.cli {quoted}"


# ---- submit, follow, report -------------------------------------------------------------------------------------

def submit(cfg, job: list[str], config: str | None, *, address: str | None = None, follow: bool = True,
           out=sys.stdout) -> int:
    """Submit ``r1 <job...>`` as a Ray job (``cfg``: the config it runs, loaded here with the job's overrides);
    print the job id and run dir, then (``follow``) its logs until it ends. Returns 0 when the job succeeded,
    1 when it failed (after a line naming the failing stage)."""
    output_dir = durable_output_dir(cfg.run.output_dir)
    args = job_arguments(job, config, output_dir)
    client = job_client(address)
    job_id = client.submit_job(entrypoint=entrypoint(cfg, args), runtime_env=job_runtime_env(cfg),
                               submission_id=f"r1-{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                               metadata={"r1_command": " ".join(job), "r1_run_dir": f"{output_dir}/{cfg.run.name}"})
    print(f"submitted job {job_id}: r1 {' '.join(args)}", file=out)
    print(f"run dir: {output_dir}/{cfg.run.name} (every node writes here: a shared filesystem on a multi-node "
          f"cluster, see docs/cluster.md)", file=out)
    for key in unforwarded_paths(cfg):
        print(f"note: {key}={os.environ[key]} is this machine's, not forwarded: the nodes use their own default "
              f"(set cluster.job.env_vars.{key} to the cluster's path)", file=out)
    print(f"follow: r1 jobs logs {job_id} --follow; stop: r1 jobs stop {job_id}", file=out)
    if not follow:
        return 0
    return follow_job(client, job_id, out=out)


def follow_job(client, job_id: str, out=sys.stdout) -> int:
    """Stream a job's logs, then report how it ended (the failing stage's error line when it failed)."""
    import asyncio

    async def tail() -> str:
        seen = []
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            seen.append(chunk)
        return "".join(seen)

    logs = asyncio.run(tail())
    status = wait_for_end(client, job_id)
    return report_end(client, job_id, status, logs or client.get_job_logs(job_id), out=out)


def wait_for_end(client, job_id: str, poll_s: float = 1.0, timeout_s: float = 60.0) -> str:
    """The job's final status (the log stream can end a moment before the status does)."""
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while not status.endswith(FINAL) and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    return status.rsplit(".", 1)[-1]


def failure_line(logs: str) -> str | None:
    """The job's own one-line error (``r1: error ...``, naming the stage that failed), if it printed one."""
    lines = [ln.strip() for ln in logs.splitlines() if ln.strip().startswith("r1: error")]
    return lines[-1] if lines else None


def report_end(client, job_id: str, status: str, logs: str, out=sys.stdout) -> int:
    """Print how the job ended; 0 if it succeeded."""
    if status == "SUCCEEDED":
        print(f"job {job_id} succeeded", file=out)
        return 0
    info = client.get_job_info(job_id)
    line = failure_line(logs) or (info.message or "").splitlines()[0]
    print(f"job {job_id} {status.lower()}: {line}", file=out)
    return 1


# ---- r1 jobs ----------------------------------------------------------------------------------------------------

def jobs(action: str, job_id: str | None, *, address: str | None = None, follow: bool = False,
         out=sys.stdout) -> int:
    """``r1 jobs list|status|logs|stop``."""
    client = job_client(address)
    if action == "list":
        for info in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((info.start_time or 0) / 1000))
            what = (info.metadata or {}).get("r1_command") or info.entrypoint
            print(f"{info.submission_id or info.job_id}  {str(info.status).rsplit('.', 1)[-1]:<9}  {started}  {what}",
                  file=out)
        return 0
    if not job_id:
        raise SubmitError(f"r1 jobs {action}: give a job id (r1 jobs list shows them)")
    if action == "status":
        info = client.get_job_info(job_id)
        status = str(info.status).rsplit(".", 1)[-1]
        run_dir = (info.metadata or {}).get("r1_run_dir", "?")
        print(f"{job_id}: {status} (run dir {run_dir})", file=out)
        if status in ("FAILED", "STOPPED"):
            print(failure_line(client.get_job_logs(job_id)) or info.message, file=out)
        return 0
    if action == "logs":
        if follow:
            return follow_job(client, job_id, out=out)
        out.write(client.get_job_logs(job_id))
        return 0
    if action == "stop":
        print(f"{job_id}: {'stop requested' if client.stop_job(job_id) else 'already ended'}", file=out)
        return 0
    raise SubmitError(f"r1 jobs {action}: expected list, status, logs or stop")
