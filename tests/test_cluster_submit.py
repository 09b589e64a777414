"""`r1 submit`, `r1 jobs` and plain `ray job submit` against a real two-node Ray cluster that the test starts
(head + a node with the custom resource ``rollout_node``), with Ray's token authentication on."""
import json
import subprocess
import sys
import time

import pytest

from tests.ray_cluster import BIN, start_cluster, stop_cluster

pytestmark = pytest.mark.slow

TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=4", "rollout.max_new_tokens=24", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=16",
        "eval.n_samples=1", "eval.k=[1]", "rl.eval_every=0", "rl.eval_at_ends=true", "rl.steps=1",
        "trainer.micro_batch_size=4"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, smollm2_dir):
    c = start_cluster(tmp_path_factory.mktemp("ray-cluster"), node_resources={"rollout_node": 1})
    yield c
    stop_cluster(c)


def r1(*args) -> list[str]:
    return [str(BIN / "r1"), *args]


def test_a_stage_submitted_with_r1_submit_runs_with_its_rollout_actor_on_the_second_node(cluster, tmp_path):
    runs = tmp_path / "runs"
    done = cluster.run(r1("submit", "-c", "configs/quickstart.yaml", "--address", cluster.dashboard, "reasoning-rl",
                          "run.name=submitted", f"run.output_dir={runs}", "cluster.rollout.resources={rollout_node: 1}",
                          *TINY))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = next(ln.split()[2].rstrip(":") for ln in done.stdout.splitlines() if ln.startswith("submitted job"))
    assert f"run dir: {runs}/submitted" in done.stdout
    assert f"job {job_id} succeeded" in done.stdout
    out = runs / "submitted" / "reasoning_rl"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and (out / "model" / "model.safetensors").is_file()
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    # Placed by the custom resource: every rollout actor of the job ran on the node that has it.
    rollouts = cluster.actors("RolloutWorker")
    assert rollouts and all(a["node_resources"].get("rollout_node") == 1 for a in rollouts), rollouts
    trainers = cluster.actors("PolicyTrainer")
    assert trainers, "the trainer actor is listed too"
    # r1 jobs sees it, with the run dir it wrote to.
    listed = cluster.run(r1("jobs", "list", "--address", cluster.dashboard))
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout, listed.stdout + listed.stderr
    status = cluster.run(r1("jobs", "status", job_id, "--address", cluster.dashboard))
    assert f"{job_id}: SUCCEEDED (run dir {runs}/submitted)" in status.stdout, status.stdout + status.stderr
    logs = cluster.run(r1("jobs", "logs", job_id, "--address", cluster.dashboard))
    assert f"r1: run dir: {runs}/submitted" in logs.stdout, logs.stdout[-2000:]


def test_users_reward_modules_outside_the_project_travel_with_a_submitted_job(cluster, tmp_path):
    # The user's folder is the working dir of `r1 submit`; the job's working dir is the project, so the three
    # modules reach the job's driver and every actor (on both nodes) only as the runtime env's py_modules.
    from tests.test_user_rewards_e2e import CONFIG, USER_REWARDS, assert_each_reward_scored, user_rewards_override
    from tests.user_reward_modules import write_user_reward_modules

    folder = write_user_reward_modules(tmp_path / "user")
    runs = tmp_path / "runs"
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONPATH"}  # a user's shell: the cwd finds the modules
    done = subprocess.run(r1("submit", "-c", CONFIG, "--address", cluster.dashboard, "reasoning-rl",
                             "run.name=users", f"run.output_dir={runs}", *TINY, "rl.steps=2", "rl.eval_at_ends=false",
                             # the reward worker on the second node: the modules must reach that node too
                             "cluster.reward.resources={rollout_node: 1}", user_rewards_override()), cwd=folder, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = next(ln.split()[2].rstrip(":") for ln in done.stdout.splitlines() if ln.startswith("submitted job"))
    assert f"job {job_id} succeeded" in done.stdout
    assert_each_reward_scored(runs / "users" / "reasoning_rl" / "metrics.jsonl", USER_REWARDS)
    code = ("import json, sys\nfrom pipeline.submit import job_client\n"
            f"info = job_client({cluster.dashboard!r}).get_job_info({job_id!r})\n"
            "print(json.dumps(info.runtime_env.get('py_modules', [])))\n")
    shipped = cluster.run([sys.executable, "-c", code], timeout=120)
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    assert len(json.loads(shipped.stdout.strip().splitlines()[-1])) == 3  # one package per module file


def test_a_submitted_job_can_be_stopped(cluster, tmp_path):
    done = cluster.run(r1("submit", "-c", "configs/quickstart.yaml", "--address", cluster.dashboard, "--no-follow",
                          "reasoning-rl", "run.name=stopped", f"run.output_dir={tmp_path}", *TINY, "rl.steps=50"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    job_id = next(ln.split()[2].rstrip(":") for ln in done.stdout.splitlines() if ln.startswith("submitted job"))
    stop = cluster.run(r1("jobs", "stop", job_id, "--address", cluster.dashboard))
    assert f"{job_id}: stop requested" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = cluster.run(r1("jobs", "status", job_id, "--address", cluster.dashboard)).stdout
        if "STOPPED" in status:
            break
        time.sleep(2)
    assert f"{job_id}: STOPPED" in status, status


def test_a_failing_job_reports_the_failing_stage_and_its_error(cluster, tmp_path):
    done = cluster.run(r1("submit", "-c", "configs/quickstart.yaml", "--address", cluster.dashboard, "reasoning-rl",
                          "run.name=failing", f"run.output_dir={tmp_path}", "rl.init_model=/nonexistent/model"))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert " failed: r1: error in stage reasoning_rl: model '/nonexistent/model'" in last, last


def test_plain_ray_job_submit_of_r1_run_writes_to_a_durable_place(cluster, tmp_path):
    # What the README shows: `ray job submit --working-dir . -- r1 run ...` with a relative run.output_dir. The
    # job's cwd is Ray's temporary copy of the project; the run goes to $R1_RUNS_ROOT instead.
    durable = tmp_path / "durable"
    env_json = json.dumps({"env_vars": {"R1_RUNS_ROOT": str(durable)}})
    done = cluster.run([str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
                        "--runtime-env-json", env_json, "--", "r1", "run", "-c", "configs/quickstart.yaml",
                        "--until", "base", "--no-report", "run.name=plain",
                        "data.tasks=[{name: arithmetic, n_train: 4, n_test: 4}]", "eval.n_samples=1", "eval.k=[1]",
                        "rollout.max_new_tokens=16", "rollout.kv_cache_gb=0.5"])
    (tmp_path.parent / "plain-job.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((durable / "runs" / "plain" / "base" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["eval"]["per_task"] == {"arithmetic": manifest["eval"]["pass@1"]}


def test_a_client_without_the_token_is_told_where_ray_looks(cluster, tmp_path):
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_TOKEN": ""}
    done = cluster.run(r1("jobs", "list", "--address", cluster.dashboard), env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"r1: error: Ray at {cluster.dashboard} requires token authentication and no token found: Ray reads "
        "$RAY_AUTH_TOKEN, the file named by $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token (copy the head node's "
        "~/.ray/auth_token)"), done.stderr[-2000:]
