"""Scoring and aggregation of eval generations (fast), and real evaluations with both engines (slow)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from rollout.types import Completion, Generation
from stages.evaluate import aggregate, format_table, score_generation

ROOT = Path(__file__).resolve().parents[1]
GOOD = "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>"
WRONG = "<think>\nguess\n</think>\n<answer>\n5\n</answer>"
NO_FORMAT = "The answer is 4."


def gen(*texts, length=5):
    return Generation(prompt_ids=[1, 2], completions=[
        Completion(text=t, token_ids=list(range(length)), logprobs=None,
                   finish_reason="length" if "cut" in t else "stop") for t in texts])


def test_score_and_aggregate_by_task():
    math_sample = {"id": "a", "task": "arith", "prompt": "2+2?", "answer": "4"}
    cd_sample = {"id": "b", "task": "countdown", "prompt": "...", "numbers": [2, 3], "target": 6,
                 "verifier": "countdown", "answer": "2 * 3"}
    scored = [
        score_generation(math_sample, gen(GOOD, WRONG, NO_FORMAT, GOOD)),
        score_generation(math_sample, gen(WRONG, WRONG, WRONG, WRONG)),
        score_generation(cd_sample, gen("<think>x</think><answer>2*3</answer>", "<think>x</think><answer>2+3</answer>",
                                        "cut", "<think>x</think><answer>3*2</answer>")),
    ]
    assert scored[0].correct == [True, False, False, True]
    assert scored[0].formatted == [True, True, False, True]
    assert scored[2].correct == [True, False, False, True]
    metrics = aggregate(scored, ks=[1, 4])
    assert set(metrics) == {"arith", "countdown", "all"}
    arith = metrics["arith"]
    assert math.isclose(arith.pass_at[1], (2 / 4 + 0) / 2)
    assert math.isclose(arith.pass_at[4], 0.5)  # one prompt solved at least once out of two
    assert arith.maj_at[4] == 0.5  # prompt 1: "4" twice vs "5" once -> right; prompt 2: wrong
    assert math.isclose(arith.format_rate, 7 / 8)
    assert metrics["countdown"].truncation_rate == 0.25
    assert metrics["countdown"].maj_at[4] == 1.0  # three different expressions tie: the first ("2*3", right) wins
    assert metrics["all"].n_prompts == 3
    assert arith.reasons["wrong"] == 5
    table = format_table(metrics)
    assert "pass@4" in table and "maj@4" in table and "countdown" in table


def test_k_larger_than_samples_is_left_out():
    scored = [score_generation({"task": "t", "prompt": "p", "answer": "4"}, gen(GOOD, WRONG))]
    metrics = aggregate(scored, ks=[1, 4])
    assert set(metrics["t"].pass_at) == {1}


def tiny_overrides(tmp_path, engine):
    return [f"run.output_dir={tmp_path}", "run.name=t", f"rollout.engine={engine}", "rollout.max_new_tokens=48",
            "eval.n_samples=2", "eval.k=[1,2]", "eval.limit_per_task=3", "rollout.gpu_memory_utilization=0.35"]


def check_eval_dir(out_dir: Path, tasks: set[str]):
    summary = json.loads((out_dir / "eval.json").read_text())
    assert tasks <= set(summary["tasks"])
    for name, m in summary["tasks"].items():
        assert 0.0 <= m["pass_at"]["1"] <= m["pass_at"]["2"] <= 1.0
        assert 0.0 <= m["format_rate"] <= 1.0
        lo, hi = m["pass1_ci95"]
        assert lo <= m["pass_at"]["1"] <= hi
    rows = [json.loads(line) for line in (out_dir / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * len(tasks) and all(len(r["completions"]) == 2 for r in rows)
    assert summary["generated_tokens"] > 0
    return summary


@pytest.mark.slow
def test_eval_with_vllm_engine(tmp_path, vllm_engine):
    from pipeline.evaluation import run_eval

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", tiny_overrides(tmp_path, "vllm"))
    metrics, table = run_eval(cfg, engine=vllm_engine, label="base")
    out = tmp_path / "t" / "eval" / "base"
    check_eval_dir(out, {"arithmetic", "word_problem", "instruction"})
    assert (out / "table.txt").read_text().strip() == table.strip()


@pytest.mark.slow
def test_r1_eval_cli_with_hf_engine(tmp_path, smollm2_dir):
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "gold": str(2 * i)}) for i in range(3)))
    # The user's own file with their field names goes through the same command.
    cmd = [sys.executable, "-m", "pipeline.cli", "eval", "-c", str(ROOT / "configs" / "quickstart.yaml"),
           "--data", str(data), "--label", "mine", *tiny_overrides(tmp_path, "hf"),
           "data.sources=[]"]
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert "field 'prompt'" in bad.stderr and "question" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", "-c", str(ROOT / "configs" / "quickstart.yaml"),
                         "--label", "base", *tiny_overrides(tmp_path, "hf")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "pass@1" in ok.stdout and "format" in ok.stdout
    check_eval_dir(tmp_path / "t" / "eval" / "base",
                   {"arithmetic", "word_problem", "instruction"})


# ---- configured rewards: what "correct" and "formatted" mean ------------------------------------------------

BOXED = "<think>6 * 7 = 42</think>\nThe answer is $\\boxed{42}$."
HALF = "<think>half of one</think> So $x = \\boxed{\\frac{1}{2}}$"


class FixedEngine:
    """A stand-in for the engine (this tests the code around it): fixed completions per prompt, in order."""

    def __init__(self, texts_per_prompt):
        self.texts_per_prompt = texts_per_prompt
        self.prompts = None

    def generate(self, prompts, sampling, progress=False):
        self.prompts = prompts
        return [gen(*texts) for texts in self.texts_per_prompt[: len(prompts)]]


def test_eval_scoring_roles_take_the_configured_extraction():
    from stages.evaluate import EvalScoring

    sample = {"id": "a", "task": "math", "prompt": "6*7?", "answer": "42"}
    default = score_generation(sample, gen(BOXED, "<think>x</think><answer>42</answer>"))
    assert default.correct == [False, True] and default.reasons[0] == "no_answer_block"
    boxed = EvalScoring(correctness={"name": "correctness", "options": {"answer_format": "boxed"}},
                        format={"name": "format", "options": {"style": "think_boxed"}})
    scored = score_generation(sample, gen(BOXED, "<think>x</think><answer>42</answer>", BOXED), scoring=boxed)
    assert scored.correct == [True, False, True] and scored.reasons == ["ok", "no_boxed", "ok"]
    assert scored.formatted == [True, False, True]
    assert scored.answers == ["42", None, "42"]  # maj@k votes on the same extraction
    assert boxed.describe()["answer_format"] == "boxed" and boxed.describe()["format_style"] == "think_boxed"
    assert EvalScoring().describe()["answer_format"] == "tags" and EvalScoring().format_style() == "r1"


def test_eval_roles_default_to_the_recipes_rewards(tmp_path):
    from pipeline.eval_rewards import eval_scoring, recipe_scoring

    cfg = load_config(None, ["rewards.items.1.options={answer_format: auto, timeout_s: 2}",
                             "eval.rewards.format.options.style=think_boxed"])
    scoring = eval_scoring(cfg, prefilled_think=True)
    assert scoring.correctness == {"name": "correctness", "options": {"answer_format": "auto", "timeout_s": 2}}
    assert scoring.format == {"name": "format", "options": {"style": "think_boxed"}}
    assert scoring.prefilled_think is True
    # Rejection sampling keeps what the training rewards call correct and well-formed: no eval overrides.
    assert recipe_scoring(cfg, prefilled_think=False).format == {"name": "format", "options": {}}
    cfg = load_config(None, ["eval.rewards.correctness.options.answer_format=last_number"])
    assert eval_scoring(cfg, False).correctness == {"name": "correctness", "options": {"answer_format": "last_number"}}
    assert eval_scoring(load_config(None), False).summary_line() == (
        "scored by correctness (answer_format=tags), format (style=r1)")


def test_run_eval_with_boxed_extraction_scores_boxed_answers_and_names_it(tmp_path, smollm2_dir):
    from pipeline.evaluation import run_eval

    samples = [{"id": "a", "task": "math", "prompt": "What is 6 * 7?", "answer": "42"},
               {"id": "b", "task": "math", "prompt": "What is half of 1?", "answer": "0.5"}]
    outputs = [[BOXED, "<think>x</think><answer>42</answer>"], [HALF, HALF]]
    common = [f"run.output_dir={tmp_path}", "run.name=t", "eval.n_samples=2", "eval.k=[1,2]",
              "rewards.prefilled_think=false"]
    boxed_cfg = load_config(None, common + ["eval.rewards.correctness.options.answer_format=boxed",
                                            "eval.rewards.format.options.style=think_boxed"])
    metrics, table = run_eval(boxed_cfg, model=smollm2_dir, engine=FixedEngine(outputs), samples=samples,
                              out=str(tmp_path / "boxed"), label="boxed")
    assert math.isclose(metrics["math"].pass_at[1], (1 / 2 + 2 / 2) / 2)
    assert math.isclose(metrics["math"].format_rate, 3 / 4)
    assert metrics["math"].reasons == {"ok": 3, "no_boxed": 1}
    assert table.splitlines()[0] == "scored by correctness (answer_format=boxed), format (style=think_boxed)"
    summary = json.loads((tmp_path / "boxed" / "eval.json").read_text())
    assert summary["scoring"]["answer_format"] == "boxed" and summary["scoring"]["format_style"] == "think_boxed"
    assert summary["scoring"]["correctness"] == {"name": "correctness", "options": {"answer_format": "boxed"}}
    assert (tmp_path / "boxed" / "table.txt").read_text().startswith("scored by correctness (answer_format=boxed)")

    # The same generations under the recipe's default (R1 <answer> tags): the boxed answers score 0.
    tags_cfg = load_config(None, common)
    metrics, table = run_eval(tags_cfg, model=smollm2_dir, engine=FixedEngine(outputs), samples=samples,
                              out=str(tmp_path / "tags"), label="tags")
    assert math.isclose(metrics["math"].pass_at[1], (1 / 2 + 0) / 2)
    assert metrics["math"].reasons["no_answer_block"] == 3
    assert "answer_format=tags" in table.splitlines()[0]
