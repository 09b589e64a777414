"""R1-Zero: `recipe.variant: zero` (base eval -> reasoning RL from the base model, then stop) and the paper's
template (`data.template`: r1_zero, r1_zero_chat) wherever prompts are rendered; configs/r1-zero.yaml keeps
the quickstart's RL budget. The slow test runs `r1 run` of R1-Zero at toy size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import R1_SYSTEM_PROMPT, load_config
from pipeline.fingerprints import data_part, eval_fingerprint, training_fingerprint, training_parts
from pipeline.recipe import STAGES, recipe_stages, run_stage_command, select_stages, stage_of
from tasks.prompting import (R1_ZERO_TEMPLATE, chat_messages, render_prompt_ids, render_prompt_text, render_sft_pair,
                             template_prefills_think)

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart.yaml"
ZERO = ROOT / "configs" / "r1-zero.yaml"
PAPER = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
         "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
         "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
         "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
         "User: {prompt}. Assistant:")
SAMPLE = {"prompt": "What is 6 * 7?"}


class PlainTokenizer:
    """A base model's tokenizer: no chat template; one id per character."""

    chat_template = None
    eos_token = "<eos>"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


class ChatMLTokenizer(PlainTokenizer):
    """A chat tokenizer in ChatML's layout (SmolLM2's, default system turn included); ``opens_think``: a template
    that pre-fills ``<think>`` into the assistant turn (R1-distill / Qwen3 style)."""

    chat_template = "chatml"
    eos_token = "<|im_end|>"

    def __init__(self, opens_think=False):
        self.opens_think = opens_think

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "" if messages[0]["role"] == "system" else "<|im_start|>system\nDEFAULT<|im_end|>\n"
        text += "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n" + ("<think>\n" if self.opens_think else "")
        return text


# --- the template ---------------------------------------------------------------------------------------------


def test_r1_zero_is_the_papers_template_as_raw_text_on_any_tokenizer():
    assert R1_ZERO_TEMPLATE == PAPER
    assert PAPER.startswith(R1_SYSTEM_PROMPT)  # the library's default system prompt is its instruction part
    want = PAPER.format(prompt="What is 6 * 7?")
    for tok in (PlainTokenizer(), ChatMLTokenizer()):
        assert render_prompt_text(tok, SAMPLE, "IGNORED SYSTEM", "r1_zero") == want
        assert render_prompt_ids(tok, SAMPLE, "IGNORED SYSTEM", "r1_zero") == [ord(c) for c in want]
    # without a chat template, r1_zero_chat has nothing to wrap the transcript in: the raw transcript
    assert render_prompt_text(PlainTokenizer(), SAMPLE, "SYS", "r1_zero_chat") == want


def test_r1_zero_chat_puts_the_transcript_in_the_user_turn():
    text = render_prompt_text(ChatMLTokenizer(), SAMPLE, "IGNORED SYSTEM", "r1_zero_chat")
    assert text == ("<|im_start|>system\nDEFAULT<|im_end|>\n<|im_start|>user\n" + PAPER.format(prompt="What is 6 * 7?")
                    + "<|im_end|>\n<|im_start|>assistant\n")


def test_chat_is_unchanged_and_is_the_default():
    tok = ChatMLTokenizer()
    assert render_prompt_text(tok, SAMPLE, "SYS") == render_prompt_text(tok, SAMPLE, "SYS", "chat") == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt_text(PlainTokenizer(), SAMPLE, "SYS") == "SYS\nUser: What is 6 * 7?\nAssistant:"
    with pytest.raises(ValueError, match="template='zero'"):
        render_prompt_text(tok, SAMPLE, "SYS", "zero")


@pytest.mark.parametrize("template", ["chat", "r1_zero", "r1_zero_chat"])
@pytest.mark.parametrize("tok", [PlainTokenizer(), ChatMLTokenizer()], ids=["base", "chat"])
def test_an_sft_example_is_trained_on_the_prompt_generation_sees(tok, template):
    """Cold-start demos and rejection-sampled rows are chat messages with the system prompt; SFT renders them
    with the template, so their prompt is byte for byte the one RL and eval generate from."""
    reply = {"role": "assistant", "content": "<think>6*7</think><answer>42</answer>"}
    messages = chat_messages(SAMPLE, "SYS") + [reply]
    prompt, target = render_sft_pair(tok, messages, template)
    assert prompt == render_prompt_ids(tok, SAMPLE, "SYS", template)
    text = "".join(map(chr, target))
    assert "<answer>42</answer>" in text and text.rstrip().endswith(tok.eos_token)


def test_template_prefills_think_follows_the_template():
    opens = ChatMLTokenizer(opens_think=True)
    assert template_prefills_think(opens, "SYS", "chat") and template_prefills_think(opens, "SYS", "r1_zero_chat")
    assert not template_prefills_think(opens, "SYS", "r1_zero")  # raw text ends at "Assistant:"
    assert not template_prefills_think(ChatMLTokenizer(), "SYS", "r1_zero_chat")


@pytest.mark.slow
def test_smollm2_renders_each_template_once(smollm2_tokenizer):
    tok = smollm2_tokenizer
    transcript = PAPER.format(prompt="What is 6 * 7?")
    raw = tok.decode(render_prompt_ids(tok, SAMPLE, R1_SYSTEM_PROMPT, "r1_zero"))
    assert raw == transcript and "<|im_start|>" not in raw
    chat = tok.decode(render_prompt_ids(tok, SAMPLE, R1_SYSTEM_PROMPT, "r1_zero_chat"))
    assert chat.count(transcript) == 1 and chat.count("<|im_start|>user\n" + transcript + "<|im_end|>") == 1
    assert chat.count("<|im_start|>system") == 1 and chat.endswith("<|im_start|>assistant\n")
    assert R1_SYSTEM_PROMPT + " User:" in chat and chat.count(R1_SYSTEM_PROMPT) == 1  # only inside the transcript
    messages = chat_messages(SAMPLE, R1_SYSTEM_PROMPT) + [{"role": "assistant", "content": "<think>x</think>"}]
    for template in ("r1_zero", "r1_zero_chat"):
        prompt, target = render_sft_pair(tok, messages, template)
        assert prompt == render_prompt_ids(tok, SAMPLE, R1_SYSTEM_PROMPT, template)
        assert tok.decode(target).rstrip().endswith("<|im_end|>")
        assert not template_prefills_think(tok, R1_SYSTEM_PROMPT, template)


# --- the recipe variant ---------------------------------------------------------------------------------------


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=t", *overrides])


def test_zero_runs_base_then_reasoning_rl_from_the_base_model_and_stops():
    zero = recipe_stages("zero")
    assert [s.name for s in zero] == ["base", "reasoning_rl"]
    rl = zero[1]
    assert rl.inputs == () and rl.compared_with == "base" and rl.target_delta == ("base", "reasoning", "correct")
    assert recipe_stages("r1") == STAGES  # the full recipe is the table as it is
    assert next(s for s in STAGES if s.name == "reasoning_rl").inputs == ("cold_start",)
    assert [s.name for s in select_stages(None, None, "zero")] == ["base", "reasoning_rl"]
    assert [s.name for s in select_stages(None, "reasoning_rl", "zero")] == ["base", "reasoning_rl"]
    with pytest.raises(ValueError, match="--from cold_start: not a stage of recipe.variant=zero"):
        select_stages("cold_start", None, "zero")
    with pytest.raises(ValueError, match="--until sft: not a stage of recipe.variant=zero"):
        select_stages(None, "sft", "zero")


def test_a_stage_outside_the_variant_is_refused_in_one_line(tmp_path):
    cfg = _cfg(tmp_path, "recipe.variant=zero")
    with pytest.raises(ValueError) as err:
        stage_of(cfg, "cold_start")
    assert str(err.value) == ("stage cold_start is not part of recipe.variant=zero (its stages: base, reasoning_rl); "
                              "set recipe.variant=r1 to run it")
    with pytest.raises(ValueError, match="not part of recipe.variant=zero"):
        run_stage_command(cfg, next(s for s in STAGES if s.name == "sft"))
    assert not (cfg.run_dir() / "sft").exists()
    assert stage_of(_cfg(tmp_path), "cold_start").name == "cold_start"


def test_the_cli_refuses_a_stage_command_outside_the_variant(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["cold-start", "-c", str(ZERO), f"run.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("r1: error: stage cold_start is not part of recipe.variant=zero (its stages: base, reasoning_rl); "
                   "set recipe.variant=r1 to run it")
    assert not (tmp_path / "r1-zero").exists()


def test_reasoning_rl_starts_from_the_base_model_under_zero_even_beside_a_cold_start(tmp_path):
    from pipeline.rl import reasoning_rl_job

    cold = tmp_path / "t" / "cold_start"
    (cold / "model").mkdir(parents=True)
    (cold / "manifest.json").write_text(json.dumps({"complete": True, "model": str(cold / "model")}))
    assert reasoning_rl_job(_cfg(tmp_path)).init_model == str(cold / "model")
    assert reasoning_rl_job(_cfg(tmp_path, "recipe.variant=zero")).init_model == "smollm2"
    assert reasoning_rl_job(_cfg(tmp_path, "recipe.variant=zero", "rl.init_model=/m")).init_model == "/m"


def test_fingerprints_carry_the_variant_and_the_template(tmp_path):
    r1, zero = _cfg(tmp_path), _cfg(tmp_path, "recipe.variant=zero")
    rl_r1, rl_zero = stage_of(r1, "reasoning_rl"), stage_of(zero, "reasoning_rl")
    assert training_parts(zero, rl_zero)["recipe.variant"] == "zero"
    assert "recipe.variant" not in training_parts(r1, rl_r1)  # the full recipe's fingerprints as before
    upstream = {"cold_start": "f1"}
    assert training_fingerprint(zero, rl_zero, upstream) != training_fingerprint(r1, rl_r1, upstream)
    # The base stage is the same model and eval under both paths: a zero run reuses it.
    base = stage_of(r1, "base")
    assert training_fingerprint(zero, base, {}) == training_fingerprint(r1, base, {})
    assert eval_fingerprint(zero, "base") == eval_fingerprint(r1, "base")
    # The template renders every prompt: the stages that render prompts train again, every eval re-runs.
    templated = _cfg(tmp_path, "data.template=r1_zero")
    for stage in STAGES:
        changed = training_fingerprint(templated, stage, upstream) != training_fingerprint(r1, stage, upstream)
        renders = "system_prompt" in stage.data
        assert changed == renders, stage.name
        if stage.has_model:
            assert eval_fingerprint(templated, stage.name) != eval_fingerprint(r1, stage.name), stage.name
    assert eval_fingerprint(_cfg(tmp_path, "data.template=r1_zero_chat"), "base") != eval_fingerprint(templated, "base")
    # chat, the default, hashes as the system prompt alone did before the templates: earlier runs stay done.
    assert data_part(r1.model_dump(mode="json"), "system_prompt") == r1.data.system_prompt


def test_the_report_compares_zero_rl_with_the_base_model(tmp_path):
    from pipeline.report import write_report

    run = tmp_path / "run"
    for name, right in (("base", 1), ("reasoning_rl", 6), ("cold_start", 9)):  # cold_start: an earlier r1 run's
        (run / name / "eval").mkdir(parents=True)
        row = {"n_prompts": 10, "n_samples": 1, "pass_at": {"1": right / 10}, "maj_at": {}, "pass1_ci95": [0, 1],
               "format_rate": 0.5}
        (run / name / "eval" / "eval.json").write_text(json.dumps({"tasks": {"arithmetic": row, "all": row}}))
        (run / name / "eval" / "eval_samples.jsonl").write_text("".join(json.dumps(
            {"id": f"p{i}", "task": "arithmetic", "completions": [{"correct": i < right, "format": True}]}) + "\n"
            for i in range(10)))
        variant = "r1" if name == "cold_start" else "zero"
        (run / name / "manifest.json").write_text(json.dumps({"complete": True, "recipe_variant": variant}))
        os.utime(run / name / "manifest.json", (1e9 + right, 1e9 + right) if name != "cold_start" else (1e9, 1e9))
    md = write_report(run).read_text()
    assert "Recipe variant `zero` (R1-Zero)" in md
    assert "| cold_start |" not in md  # not a stage of the path the run was last run for
    assert "| reasoning pass@1 vs base: +0.500 " in md
    assert json.loads((run / "report" / "report.json").read_text())["recipe_variant"] == "zero"


# --- configs/r1-zero.yaml -------------------------------------------------------------------------------------


def test_r1_zero_config_has_the_quickstarts_rl_budget():
    quick, zero = load_config(QUICK), load_config(ZERO)
    for section in ("rl", "rollout", "rewards", "eval", "trainer", "model"):
        assert getattr(zero, section) == getattr(quick, section), section
    assert zero.data.tasks == quick.data.tasks and zero.data.sources == quick.data.sources
    assert zero.recipe.variant == "zero" and zero.data.template in ("r1_zero", "r1_zero_chat")
    assert zero.run.name == "r1-zero" and zero.run.seed == quick.run.seed
    # nothing else of the full recipe is configured there: it is R1-Zero's file, not a copy of the quickstart
    assert set(yaml.safe_load(ZERO.read_text())) == {"run", "model", "recipe", "data", "rollout", "rewards", "eval",
                                                     "trainer", "rl"}


# --- end to end -----------------------------------------------------------------------------------------------

TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}, "
        "{name: word_problem, n_train: 40, n_test: 4, difficulty: 1}]",
        "rollout.max_new_tokens=48", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=32",
        "eval.n_samples=1", "eval.k=[1]", "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4",
        "trainer.micro_batch_size=4"]


@pytest.mark.slow
def test_r1_run_of_r1_zero_trains_rl_from_the_base_model_and_reports(tmp_path, smollm2_dir):
    run_dir = tmp_path / "zero"
    # A finished cold start of an earlier full-recipe run in the same folder must not be read.
    cold = run_dir / "cold_start"
    (cold / "model").mkdir(parents=True)
    (cold / "manifest.json").write_text(json.dumps({"complete": True, "model": str(cold / "model")}))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "-c", str(ZERO), f"run.output_dir={tmp_path}",
           "run.name=zero", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    assert {"base", "reasoning_rl"} <= set(manifests) and not {"rejection_sample", "sft"} & set(manifests)
    rl = manifests["reasoning_rl"]
    assert rl["complete"] and rl["recipe_variant"] == "zero" and rl["inputs"] == {}
    assert rl["init_model"] == smollm2_dir  # the base model, not the cold start beside it
    assert len([json.loads(line) for line in (run_dir / "reasoning_rl" / "metrics.jsonl").open()]) == 2
    saved = yaml.safe_load((run_dir / "reasoning_rl" / "config.yaml").read_text())
    assert saved["recipe"]["variant"] == "zero" and saved["data"]["template"] == load_config(ZERO).data.template
    md = (run_dir / "report" / "report.md").read_text()
    assert "Recipe variant `zero`" in md and "| reasoning_rl |" in md and "reasoning pass@1 vs base" in md
    assert "| cold_start |" not in md
    # A second run skips both stages.
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stderr.count("complete for this config and inputs; skipped") == 2
