"""Stage 3, rejection sampling: n completions per prompt from a model, keep only the verified-correct ones
whose chain of thought is clean, dedupe, cap per prompt, and mix in non-reasoning data.

Written against the engine interface (``engine.generate``), so the same code samples the RL model for
stage 3 and the final model for distillation (stage 6). Artifacts under ``out_dir``: ``data.jsonl`` (chat
examples, what `r1 sft` trains on), ``candidates.jsonl`` (every completion with its verdict, so nothing is
silently dropped), ``stats.json``.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from tasks.prompting import chat_messages, render_prompt_ids
from rollout.types import SamplingSpec

from .evaluate import EvalScoring, score_generations
from .rejection_filters import FilterSettings, acceptance_stats, mix_non_reasoning, select_completions


def sample_candidates(engine, tokenizer, samples: Sequence[Mapping], *, system_prompt: str | None,
                      sampling: SamplingSpec, prefilled_think: bool = False, progress: bool = True,
                      scoring: EvalScoring | None = None, template: str = "chat") -> list[dict]:
    """Every completion of every prompt (laid out by ``template``, :mod:`tasks.prompting`) as ``{"sample",
    "completion", "correct", "reason", "truncated"}``; "correct" by ``scoring``'s correctness reward
    (default: the built-in one, R1 ``<answer>`` tags). The kept ones become template-neutral chat examples
    (:func:`to_chat_example`): the SFT that trains on them applies the template again."""
    prompts = [render_prompt_ids(tokenizer, s, system_prompt, template) for s in samples]
    generations = engine.generate(prompts, sampling, progress=progress)
    scoring = scoring or EvalScoring(prefilled_think=prefilled_think)
    candidates = []
    for sample, gen, prompt, verdicts in zip(samples, generations, prompts,
                                             score_generations(samples, generations, scoring)):
        for j, (comp, ok, reason) in enumerate(zip(gen.completions, verdicts.correct, verdicts.reasons)):
            # Token counts for the compute accounting (stages.compute): the prompt's prefill once per prompt.
            candidates.append({"sample": sample, "completion": comp.text, "correct": ok, "reason": reason,
                               "truncated": comp.truncated, "completion_tokens": len(comp.token_ids),
                               "prompt_tokens": len(prompt) if j == 0 else 0})
    return candidates


def to_chat_example(candidate: Mapping, *, system_prompt: str | None, prefilled_think: bool = False,
                    index: int = 0) -> dict:
    """A kept completion as an SFT example: the prompt's chat messages plus the completion as the answer."""
    sample = candidate["sample"]
    text = candidate["completion"].strip()
    if prefilled_think and not text.startswith("<think>"):
        text = "<think>\n" + text  # the template opened the block; the example must carry the whole format
    messages = chat_messages(sample, system_prompt) + [{"role": "assistant", "content": text}]
    return {"id": f"{sample.get('id')}#{index}", "task": sample.get("task"), "source": "sampled",
            "messages": messages}


def build_dataset(candidates: Sequence[dict], non_reasoning: Sequence[dict], settings: FilterSettings, *,
                  ratio: float, seed: int, system_prompt: str | None, prefilled_think: bool = False
                  ) -> tuple[list[dict], dict]:
    """Select, convert and mix; returns ``(rows, stats)`` with acceptance per task and rejection reasons."""
    kept, reasons = select_completions(candidates, settings, prefilled_think=prefilled_think)
    per_prompt: Counter = Counter()
    reasoning_rows = []
    for cand in kept:
        key = cand["sample"].get("id")
        reasoning_rows.append(to_chat_example(cand, system_prompt=system_prompt, prefilled_think=prefilled_think,
                                              index=per_prompt[key]))
        per_prompt[key] += 1
    rows = mix_non_reasoning(reasoning_rows, list(non_reasoning), ratio, seed)
    stats = {"acceptance": acceptance_stats(candidates, kept), "rejection_reasons": dict(reasons),
             "candidates": len(candidates), "kept_reasoning": len(reasoning_rows),
             "non_reasoning": len(rows) - len(reasoning_rows), "rows": len(rows),
             "verifier_reasons": dict(Counter(c["reason"] for c in candidates if not c["correct"])),
             "tokens": {"prompt_tokens": sum(c.get("prompt_tokens", 0) for c in candidates),
                        "generated_tokens": sum(c.get("completion_tokens", 0) for c in candidates)}}
    return rows, stats


def write_dataset(out_dir: Path, rows: Sequence[dict], candidates: Sequence[dict], stats: dict) -> Path:
    """``data.jsonl`` (written to a temp name and renamed), ``candidates.jsonl`` and ``stats.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "candidates.jsonl", "w") as fh:
        for c in candidates:
            fh.write(json.dumps({"id": c["sample"].get("id"), "task": c["sample"].get("task"),
                                 "completion": c["completion"], "correct": c["correct"], "reason": c["reason"]},
                                ensure_ascii=False) + "\n")
    tmp = out_dir / ".data.jsonl.tmp"
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out_dir / "data.jsonl")
    (out_dir / "stats.json").write_text(json.dumps({**stats, "written_at": time.time()}, indent=2))
    return out_dir / "data.jsonl"
