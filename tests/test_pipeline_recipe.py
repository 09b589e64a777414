"""`r1 run` bookkeeping (order, skip, resume, fresh start on change), the report, and the config plumbing of
the later stages. Stage bodies here are stand-ins that write a model dir; the real stages have their own
tests and the slow end-to-end test runs them all."""
import json
from pathlib import Path

import pytest

from pipeline import recipe
from pipeline.config import load_config
from pipeline.fingerprints import training_fingerprint as fingerprint
from pipeline.recipe import Stage, run_recipe, select_stages
from rewards import weighted_sum


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=t", "recipe.eval_each_stage=false",
                              *overrides])


class Recorder:
    """Stand-in stages: each call records itself and writes a model dir; one may be told to crash once."""

    def __init__(self):
        self.calls = []
        self.crash_in = None

    def stage(self, name):
        def run(cfg, out=None):
            self.calls.append(name)
            out = Path(out) if out else cfg.run_dir() / name
            (out / "model").mkdir(parents=True, exist_ok=True)
            (out / "model" / "config.json").write_text("{}")
            (out / "progress.txt").write_text("partial")
            if self.crash_in == name:
                self.crash_in = None
                raise KeyboardInterrupt("killed")
            return {"model": str(out / "model")}
        return run


@pytest.fixture
def fake_stages(monkeypatch):
    rec = Recorder()
    stages = (Stage("a", rec.stage("a"), ("cold_start",)),
              Stage("b", rec.stage("b"), ("rl",), ("a",)),
              Stage("c", rec.stage("c"), ("sft",), ("b",)))
    monkeypatch.setattr(recipe, "STAGES", stages)
    monkeypatch.setattr(recipe, "STAGE_NAMES", tuple(s.name for s in stages))
    return rec


def test_select_stages_order_and_errors():
    names = [s.name for s in select_stages("reasoning_rl", "sft")]
    assert names == ["reasoning_rl", "rejection_sample", "sft"]
    assert [s.name for s in select_stages(None, None)][0] == "base"
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        select_stages("nope", None)
    with pytest.raises(ValueError, match="comes after"):
        select_stages("sft", "cold_start")


def test_second_run_skips_complete_stages(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    first = run_recipe(cfg)
    assert fake_stages.calls == ["a", "b", "c"]
    assert all(m["complete"] for m in first)
    run_recipe(cfg)
    assert fake_stages.calls == ["a", "b", "c"]  # nothing ran again
    manifest = json.loads((cfg.run_dir() / "b" / "manifest.json").read_text())
    assert manifest["inputs"] == {"a": first[0]["fingerprint"]}


def test_config_change_reruns_that_stage_and_everything_after_it(tmp_path, fake_stages):
    run_recipe(_cfg(tmp_path))
    changed = _cfg(tmp_path, "rl.steps=3")  # only stage b reads rl
    run_recipe(changed)
    assert fake_stages.calls == ["a", "b", "c", "b", "c"]


def test_a_killed_stage_resumes_in_its_folder_and_a_changed_one_starts_afresh(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    fake_stages.crash_in = "b"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg)
    stage_b = cfg.run_dir() / "b"
    assert (stage_b / "progress.txt").exists() and not (stage_b / "manifest.json").exists()
    (stage_b / "checkpoint.txt").write_text("keep me")  # what a real stage resumes from
    run_recipe(cfg)
    assert fake_stages.calls == ["a", "b", "b", "c"]
    assert (stage_b / "checkpoint.txt").exists()  # same config: the folder (and its checkpoints) was kept
    (stage_b / "manifest.json").unlink()  # interrupted again, then the config changes
    run_recipe(_cfg(tmp_path, "rl.steps=3"))
    assert not (stage_b / "checkpoint.txt").exists()  # a different run must not resume from it
    moved = [p for p in (cfg.run_dir() / "superseded").iterdir() if p.name.startswith("b-")]
    assert len(moved) == 1 and (moved[0] / "checkpoint.txt").read_text() == "keep me"  # ... nor lose it


def test_from_uses_upstream_manifests_and_until_stops(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    run_recipe(cfg, until="a")
    assert fake_stages.calls == ["a"]
    run_recipe(cfg, start="b")
    assert fake_stages.calls == ["a", "b", "c"]
    b = json.loads((cfg.run_dir() / "b" / "manifest.json").read_text())
    a = json.loads((cfg.run_dir() / "a" / "manifest.json").read_text())
    assert b["inputs"]["a"] == a["fingerprint"]


@pytest.fixture
def fake_evals(monkeypatch):
    """A stand-in for the held-out eval of `r1 run`: records (stage, eval.n_samples), writes eval/eval.json."""
    calls = []

    def evaluate(cfg, stage, model):
        calls.append((stage, cfg.eval.n_samples))
        out = cfg.run_dir() / stage / "eval"
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps({"n_samples": cfg.eval.n_samples, "model": model}))
        return {"pass@1": 0.5, "n_samples": cfg.eval.n_samples}

    monkeypatch.setattr(recipe, "evaluate_stage", evaluate)
    return calls


def test_an_eval_change_reruns_only_the_evals_and_keeps_the_old_ones(tmp_path, fake_stages, fake_evals):
    cfg = _cfg(tmp_path, "recipe.eval_each_stage=true")
    run_recipe(cfg)
    (cfg.run_dir() / "b" / "eval" / "step_00002").mkdir()  # an RL stage's eval during training: its own output
    model_file = cfg.run_dir() / "a" / "model" / "config.json"
    before = model_file.stat().st_mtime_ns
    run_recipe(_cfg(tmp_path, "recipe.eval_each_stage=true", "eval.n_samples=2"))
    assert fake_stages.calls == ["a", "b", "c"]  # nothing trained again, downstream included
    assert fake_evals == [(s, 4) for s in "abc"] + [(s, 2) for s in "abc"]
    manifest = json.loads((cfg.run_dir() / "a" / "manifest.json").read_text())
    assert manifest["eval"]["n_samples"] == 2 and model_file.stat().st_mtime_ns == before
    old = [p for p in (cfg.run_dir() / "superseded").iterdir() if p.name.startswith("a-eval-")]
    assert len(old) == 1 and json.loads((old[0] / "eval.json").read_text())["n_samples"] == 4
    assert json.loads((old[0] / "manifest.json").read_text())["eval"]["n_samples"] == 4  # its numbers, kept
    assert (cfg.run_dir() / "b" / "eval" / "step_00002").is_dir()  # training's own evals stay with it
    assert json.loads((cfg.run_dir() / "b" / "eval" / "eval.json").read_text())["n_samples"] == 2
    run_recipe(_cfg(tmp_path, "recipe.eval_each_stage=true", "eval.n_samples=2"))
    assert len(fake_evals) == 6  # and now it is complete for that eval too


def test_a_rollout_capacity_change_reruns_nothing(tmp_path, fake_stages, fake_evals):
    run_recipe(_cfg(tmp_path, "recipe.eval_each_stage=true"))
    run_recipe(_cfg(tmp_path, "recipe.eval_each_stage=true", "rollout.max_num_seqs=7", "rollout.kv_cache_gb=0.25",
                    "rollout.enforce_eager=true", "rollout.gpu_memory_utilization=0.9"))
    assert fake_stages.calls == ["a", "b", "c"] and len(fake_evals) == 3
    assert not (tmp_path / "t" / "superseded").exists()


def test_a_stage_from_before_the_split_fingerprints_is_moved_aside_not_deleted(tmp_path, fake_stages):
    cfg = _cfg(tmp_path)
    stage_a = cfg.run_dir() / "a"
    (stage_a / "model").mkdir(parents=True)
    (stage_a / "model" / "weights.bin").write_text("days of work")
    (stage_a / "manifest.json").write_text(json.dumps({"complete": True, "fingerprint": "0123456789abcdef"}))
    (stage_a / ".fingerprint").write_text("0123456789abcdef")
    run_recipe(cfg, until="a")
    assert fake_stages.calls == ["a"]  # unknown settings: trained again ...
    moved = list((cfg.run_dir() / "superseded").glob("a-*"))
    assert len(moved) == 1 and (moved[0] / "model" / "weights.bin").read_text() == "days of work"  # ... kept


def test_a_stage_command_records_what_run_reads(tmp_path, fake_stages, fake_evals):
    from pipeline.recipe import run_stage_command

    cfg = _cfg(tmp_path, "recipe.eval_each_stage=true")
    elsewhere = tmp_path / "elsewhere"
    run_stage_command(cfg, recipe.STAGES[0], out=str(elsewhere))  # not the run's stage: nothing recorded
    assert (elsewhere / "model").is_dir() and not (cfg.run_dir() / "a").exists()
    run_stage_command(cfg, recipe.STAGES[0])
    manifest = json.loads((cfg.run_dir() / "a" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["fingerprint"] and manifest["eval_fingerprint"] is None
    run_recipe(cfg, until="a")
    assert fake_stages.calls == ["a", "a"] and fake_evals == [("a", 4)]  # its eval only: the command ran none
    run_recipe(cfg, until="b")
    assert fake_stages.calls == ["a", "a", "b"]
    run_stage_command(cfg, recipe.STAGES[0])  # asked again: it runs, the finished one moved aside first
    assert fake_stages.calls[-1] == "a" and len(list((cfg.run_dir() / "superseded").glob("a-*"))) == 1


def test_fingerprint_depends_on_sections_and_inputs(tmp_path):
    stage = Stage("x", lambda c: {}, ("sft",), ("cold_start",))
    base = fingerprint(_cfg(tmp_path), stage, {"cold_start": "f1"})
    assert fingerprint(_cfg(tmp_path, "rl.steps=99"), stage, {"cold_start": "f1"}) == base
    assert fingerprint(_cfg(tmp_path, "sft.optim.lr=0.5"), stage, {"cold_start": "f1"}) != base
    assert fingerprint(_cfg(tmp_path), stage, {"cold_start": "f2"}) != base
    assert fingerprint(_cfg(tmp_path, "eval.n_samples=8"), stage, {"cold_start": "f1"}) == base  # eval: not training


def test_general_rl_config_merges_tasks_and_fills_the_reward_model(tmp_path):
    from pipeline.rl import general_rl_job

    cfg = _cfg(tmp_path)
    g = general_rl_job(cfg)
    names = [t.name for t in g.tasks]
    assert names == [t.name for t in cfg.data.tasks] + ["instruction"]
    rm = next(i for i in g.rewards if i.name == "reward_model")
    assert rm.options["model"] == str(cfg.run_dir() / "reward_model" / "model") and rm.tasks == ["instruction"]
    assert g.section.steps == cfg.general_rl.steps and g.init_model == cfg.model.name  # no sft model yet


def test_reward_scoped_to_tasks_scores_zero_elsewhere():
    score = weighted_sum([{"name": "format", "weight": 1.0, "tasks": ["instruction"]},
                          {"name": "correctness", "weight": 1.0}])
    good = "<think>\n2+2\n</think>\n<answer>\n4\n</answer>"
    total, parts = score(good, {"task": "arithmetic", "answer": "4"})
    assert total == 1.0 and parts["format"].reason == "not_applicable"
    total, parts = score(good, {"task": "instruction", "answer": "4"})
    assert parts["format"] == 1.0
    with pytest.raises(ValueError, match="tasks must be a list"):
        weighted_sum([{"name": "format", "tasks": [1]}])


def test_reward_model_reward_without_a_model_scores_zero():
    total, parts = weighted_sum([{"name": "reward_model"}])("x", {"prompt": "p"})
    assert total == 0.0 and parts["reward_model"].reason == "no_reward_model"


def test_student_layers_are_spread_and_the_student_runs(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.model_io import make_student, student_layer_indices

    assert student_layer_indices(30, 16) == list(range(6)) + list(range(20, 30))
    assert student_layer_indices(30, 30) == list(range(30)) and student_layer_indices(30, 1) == [29]
    with pytest.raises(ValueError, match="student_layers=31"):
        student_layer_indices(30, 31)
    out = make_student(tiny_model_dir, 1, tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(out)
    parent = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert student.config.num_hidden_layers == 1
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, parent.model.layers[1].mlp.up_proj.weight)
    gen = student.generate(ids, max_new_tokens=3, do_sample=False)  # the KV cache works with renumbered layers
    assert gen.shape == (1, 7)


def _fake_eval(stage_dir: Path, p1: float, fmt: float):
    (stage_dir / "eval").mkdir(parents=True, exist_ok=True)
    row = {"n_prompts": 10, "n_samples": 2, "pass_at": {"1": p1, "2": p1 + 0.1}, "maj_at": {"2": p1},
           "pass1_ci95": [p1 - 0.1, p1 + 0.1], "format_rate": fmt}
    (stage_dir / "eval" / "eval.json").write_text(json.dumps(
        {"tasks": {"arithmetic": row, "instruction": {**row, "pass_at": {"1": 0.5}}, "all": row}}))
    correct = [[i < p1 * 10, True] for i in range(10)]  # prompt i right in its first sample iff i < 10 * p1
    (stage_dir / "eval" / "eval_samples.jsonl").write_text("\n".join(json.dumps(
        {"id": f"p{i}", "task": "arithmetic" if i < 5 else "instruction",
         "completions": [{"correct": c, "format": fmt > 0.5} for c in cs]})
        for i, cs in enumerate(correct)) + "\n")


def test_report_has_a_row_per_evaluated_stage_and_plots(tmp_path):
    from pipeline.report import write_report

    run = tmp_path / "run"
    for name, p1, fmt in (("base", 0.02, 0.0), ("cold_start", 0.2, 0.95), ("reasoning_rl", 0.3, 0.99)):
        _fake_eval(run / name, p1, fmt)
        (run / name / "manifest.json").write_text(json.dumps({"complete": True, "seconds": 12.5}))
    (run / "cold_start" / "config.yaml").write_text("general_rl:\n  general_tasks: [{name: instruction}]\n")
    (run / "reasoning_rl" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "reward/mean": 0.1 * s, "accuracy": 0.1, "format_rate": 0.9})
                  for s in range(1, 4)) + "\n")
    (run / "rejection_sample").mkdir()
    (run / "rejection_sample" / "stats.json").write_text(json.dumps({
        "acceptance": {"all": {"prompts": 4, "candidates": 16, "kept": 5, "acceptance_rate": 0.3125,
                               "prompt_coverage": 0.75}},
        "rejection_reasons": {"incorrect": 9, "duplicate": 2}, "non_reasoning": 1}))
    md = write_report(run).read_text()
    assert "| cold_start | 0.200 | [0.100, 0.300] | 0.950 |" in md
    # cold start vs base, paired: prompt 1 gained half a sample (0.05 on average), format 0 -> 1 everywhere
    assert "| base | +0.050 [-0.048, +0.148], z=1.0 | +1.000 [+1.000, +1.000], z=inf |" in md
    assert "| reasoning_rl | 0.300 |" in md and "instruction pass@1" in md
    # RL's target: pass@1 on the reasoning prompts only (p0-p4; p2 gained half a sample): 0.1, not 0.05
    assert "| reasoning pass@1 vs cold_start: +0.100 [-0.096, +0.296], z=1.0 |" in md
    assert "| all format rate vs base: +1.000" in md
    assert '"incorrect": 9' in md and "![eval_by_stage](eval_by_stage.png)" in md
    assert (run / "report" / "eval_by_stage.png").stat().st_size > 1000
    assert (run / "report" / "stage_curves.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no stage folders"):
        write_report(tmp_path / "empty")


def test_general_tasks_are_evaluated_only_on_the_stages_named(tmp_path):
    from pipeline.config import EVALUATED_STAGES
    from pipeline.data import recipe_test_split
    from pipeline.report import _eval_size

    quickstart = str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml")
    cfg = load_config(quickstart, ["eval.general_stages=[sft,general_rl]"])
    general = {t.name for t in cfg.general_rl.general_tasks}

    def tasks_of(config, stage):
        return {s["task"] for s in recipe_test_split(config, stage)}

    assert general and tasks_of(cfg, "sft") >= general and tasks_of(cfg, "general_rl") >= general
    assert tasks_of(cfg, "cold_start") == tasks_of(cfg, "sft") - general  # the same reasoning prompts
    assert tasks_of(load_config(quickstart, ["eval.general_stages=null"]), "cold_start") >= general  # default
    with pytest.raises(ValueError, match="general_stages.*'rejection_sample'"):
        _cfg(tmp_path, "eval.general_stages=[rejection_sample]")
    assert EVALUATED_STAGES == tuple(s.name for s in recipe.STAGES if s.has_model)
    rows = [{"stage": "base", "n_prompts": 4, "per_task": {"arithmetic": 0}},
            {"stage": "sft", "n_prompts": 6, "per_task": {"arithmetic": 0, "instruction": 0}}]
    assert _eval_size(rows) == "4 prompts (arithmetic) on base; 6 prompts (arithmetic, instruction) on sft;"
    assert _eval_size(rows[:1]) == "4 prompts"
