"""Users' reward modules in a folder outside the repo drive `r1 reasoning-rl` on local Ray, run as a user runs it:
the `r1` console script with that folder as the working directory (nothing else puts it on the path). A
TRL-style, a verl-style and an async reward each give non-zero rewards; a reward that raises on every call
stops the run in one line at its first scoring. (The same rewards in a submitted job: test_cluster_submit.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.user_reward_modules import write_user_reward_modules

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
R1 = Path(sys.executable).parent / "r1"
CONFIG = str(ROOT / "configs" / "quickstart.yaml")  # an absolute path: the user's folder is the working dir
USER_REWARDS = ["my_trl_rewards:has_digit", "my_verl_rewards:compute_score", "my_async_rewards:judged_length"]
TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=4", "rollout.max_new_tokens=24", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=16",
        "rl.eval_every=0", "rl.eval_at_ends=false", "rl.save_every=2", "trainer.micro_batch_size=4"]


def user_rewards_override(names=USER_REWARDS) -> str:
    """``rewards.items`` naming the users' functions (quoted: a ``module:function`` is no YAML mapping)."""
    return "rewards.items=[%s]" % ", ".join(f"{{name: '{n}', weight: 1.0}}" for n in names)


def user_env() -> dict:
    """The environment a user's shell has: no PYTHONPATH, so only the working directory finds their modules."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}


def assert_each_reward_scored(metrics: Path, names=USER_REWARDS) -> list[dict]:
    """Every training step logged each user reward's mean, and each was non-zero on some step."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2], rows
    for name in names:
        means = [r[f"reward/{name}/mean"] for r in rows]
        assert max(means) > 0, (name, means)
        assert not any(k.startswith(f"reasons/{name}/error") or k == f"reasons/{name}/invalid_value" for r in rows
                       for k in r), (name, rows)
    return rows


def test_users_trl_verl_and_async_rewards_drive_reasoning_rl_from_their_folder(tmp_path, smollm2_dir):
    folder = write_user_reward_modules(tmp_path / "user")
    runs = tmp_path / "runs"
    done = subprocess.run([str(R1), "reasoning-rl", "-c", CONFIG, f"model.name={smollm2_dir}", "run.name=users",
                           f"run.output_dir={runs}", *TINY, "rl.steps=2", user_rewards_override()],
                          cwd=folder, env=user_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = runs / "users" / "reasoning_rl"
    rows = assert_each_reward_scored(out / "metrics.jsonl")
    assert all(r["reward/mean"] > 0 for r in rows)
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_a_reward_raising_on_every_call_stops_reasoning_rl_in_one_line_at_its_first_scoring(tmp_path, smollm2_dir):
    folder = write_user_reward_modules(tmp_path / "user")
    runs = tmp_path / "runs"
    # 4 prompts x 4 samples: the first step's scoring is the reward's first 16 calls (one reward worker).
    done = subprocess.run([str(R1), "reasoning-rl", "-c", CONFIG, f"model.name={smollm2_dir}", "run.name=broken",
                           f"run.output_dir={runs}", *TINY, "rl.prompts_per_step=4", "rollout.engine=hf",
                           "rollout.max_new_tokens=8", "rl.steps=3",
                           user_rewards_override(["format", "my_broken_rewards:always_raises"])],
                          cwd=folder, env=user_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("r1: error in stage reasoning_rl: reward 'my_broken_rewards:always_raises' failed on "
                           "every one of its first 16 calls: KeyError: 'solution' (first sample id '"), last
    assert "Traceback" not in done.stderr and "died during" not in done.stderr, done.stderr[-3000:]
    out = runs / "broken" / "reasoning_rl"
    metrics = out / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()  # no step was trained, or logged
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert not (out / "manifest.json").exists()
