"""The `r1` console script: help, config show, one-line errors, make-data."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "quickstart.yaml")


def r1(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_commands():
    out = r1("--help")
    assert out.returncode == 0
    for command in ("config", "prepare-model", "make-data", "eval"):
        assert command in out.stdout


def test_config_show_prints_resolved_yaml_with_overrides():
    out = r1("config", "show", "-c", QUICK, "eval.k=[1,8]", "run.name=demo")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["eval"]["k"] == [1, 8] and shown["run"]["name"] == "demo"
    assert shown["rollout"]["engine"] == "vllm"  # from the file
    assert "max_model_len" in shown["rollout"]  # defaults filled in


def test_bad_override_is_one_line_and_exit_2():
    out = r1("config", "show", "-c", QUICK, "rollout.max_new_tokens=lots")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "rollout.max_new_tokens='lots'" in lines[0]
    assert out.stdout == ""


def test_make_data_writes_disjoint_splits_and_demos(tmp_path):
    out = r1("make-data", "-c", QUICK, "--out", str(tmp_path), "data.tasks.0.n_train=50", "data.tasks.1.n_train=20")
    assert out.returncode == 0, out.stderr
    read = lambda name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    train, test, demos = read("train"), read("test"), read("cold_start")
    assert {s["task"] for s in test} == {"arithmetic", "word_problem", "instruction"}  # instruction: general_rl
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in test}
    assert len(demos) == len(train)
    assert demos[0]["messages"][0]["role"] == "system" and demos[0]["messages"][-1]["content"].startswith("<think>")
