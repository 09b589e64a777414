"""Training compute, counted the same way for every stage that makes a model, so two ways of making the same
student (distillation, RL alone) can be compared at equal compute.

The unit is an estimate of floating-point operations from the tokens each model processed:

- a forward pass costs ``2 N`` FLOPs per token (sampling: the prompt's prefill once per prompt, then every
  generated token; a teacher scoring the student's data), a trained token ``6 N`` (forward and backward);
- ``N`` is the model's parameter count without its input embedding (a lookup, no multiply; the output head
  is counted, and is the same matrix in models that tie them).

The attention term over the context is left out (its share is small for sequences of a few hundred tokens
and equal for both sides here). Pure functions of counts, except :func:`param_count`, which reads a model
config (no weights). Every figure is a ``dict`` of plain numbers, so it goes into manifests as it is.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

DEFINITION = ("FLOPs = 2N per token of a forward pass (sampling: prompt prefill once per prompt plus generated "
              "tokens; teacher scoring) + 6N per token trained (forward + backward); N = parameters without the "
              "input embedding")
# Keys of an RL step's metrics line that hold its token counts (stages.grpo.rl_step writes them).
RL_STEP_KEYS = ("compute/prompt_tokens", "generated_tokens", "compute/trained_tokens", "compute/scored_tokens",
                "compute/reference_tokens")


@lru_cache(maxsize=16)
def param_count(model_dir: str) -> int:
    """``N`` of ``model_dir``: its parameters (tied ones once) without the input embedding. Built on the meta
    device from the config: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    return int(total - (0 if tied else embedding.weight.numel()))


def part(params: int, *, forward_tokens: int = 0, trained_tokens: int = 0, **counts) -> dict:
    """One model's share of a stage's compute: ``2 N`` per forward token, ``6 N`` per trained token; the
    counts behind them are kept (``counts``: e.g. prompt_tokens, generated_tokens, model)."""
    forward_tokens, trained_tokens = int(forward_tokens), int(trained_tokens)
    return {**counts, "params": int(params), "forward_tokens": forward_tokens, "trained_tokens": trained_tokens,
            "flops": 2.0 * params * forward_tokens + 6.0 * params * trained_tokens}


def sampling_part(params: int, prompt_tokens: int, generated_tokens: int, **counts) -> dict:
    """Generation: the prompts' prefill (once per prompt: its samples share it) plus every generated token."""
    return part(params, forward_tokens=int(prompt_tokens) + int(generated_tokens), prompt_tokens=int(prompt_tokens),
                generated_tokens=int(generated_tokens), **counts)


def total(parts: Mapping[str, dict], seconds: float | None = None, **extra) -> dict:
    """A stage's compute: its parts, their FLOPs and token passes summed, and its wall seconds."""
    return {"definition": DEFINITION, "flops": sum(p["flops"] for p in parts.values()),
            "tokens": sum(p["forward_tokens"] + p["trained_tokens"] for p in parts.values()),
            "seconds": None if seconds is None else round(float(seconds), 1), "parts": dict(parts), **extra}


def grpo_step_tokens(batch, settings, *, has_reference: bool) -> dict[str, float]:
    """The token counts of one GRPO update on ``batch`` (a :class:`rollout.types.RolloutBatch` with its
    advantages), for :func:`rl_compute`:

    - ``trained_tokens``: forward + backward, per epoch, over the rows the trainer runs (loss-masked rows
      are dropped; with ``skip_zero_advantage`` and no KL or entropy term, rows of advantage exactly 0 are
      not run: the trainer's own rule, :func:`trainer.grpo_update.skippable_rows`); a group's prompt once
      (the trainer's shared prompt pass; without it the trainer does a little more than counted);
    - ``scored_tokens``: the extra forward of those rows for old logprobs when a batch takes more than one
      optimizer step (``epochs x mini_batches > 1``);
    - ``reference_tokens``: the reference model's forward over every kept row (``kl_coef`` with a reference).
    """
    kept = [i for i in range(len(batch)) if not batch.loss_mask or batch.loss_mask[i]]
    skips = settings.skip_zero_advantage and not settings.entropy_coef and not (settings.kl_coef and has_reference)
    trained = [i for i in kept if not (skips and batch.advantages[i] == 0)]

    def tokens(rows: Sequence[int]) -> int:
        prompts = {i // batch.group_size: len(batch.prompt_ids[i]) for i in rows}  # once per group
        return sum(prompts.values()) + sum(len(batch.response_ids[i]) for i in rows)

    once = tokens(trained)
    return {"compute/trained_tokens": float(once * settings.epochs),
            "compute/scored_tokens": float(once if settings.epochs * settings.mini_batches > 1 else 0),
            "compute/reference_tokens": float(tokens(kept) if has_reference else 0),
            "compute/rows_trained": float(len(trained))}


def rl_step_flops(row: Mapping[str, float], params: int, reference_params: int | None = None) -> float:
    """FLOPs of one RL step's metrics line (its ``compute/*`` counts)."""
    ref = params if reference_params is None else reference_params
    forward = row.get("compute/prompt_tokens", 0) + row.get("generated_tokens", 0)
    forward += row.get("compute/scored_tokens", 0)
    return (2.0 * params * forward + 6.0 * params * row.get("compute/trained_tokens", 0)
            + 2.0 * ref * row.get("compute/reference_tokens", 0))


def rl_compute(rows: Iterable[Mapping[str, float]], params: int, *, seconds: float | None = None,
               reference_params: int | None = None) -> dict:
    """A GRPO stage's compute from its metrics lines (steps > 0): the policy's sampling and training, the
    reference's scoring, and the steps and wall seconds."""
    steps = [r for r in rows if r.get("step", 0) > 0]
    s = {k: int(sum(r.get(k, 0) for r in steps)) for k in RL_STEP_KEYS}
    parts = {"rollout": sampling_part(params, s["compute/prompt_tokens"], s["generated_tokens"]),
             "train": part(params, forward_tokens=s["compute/scored_tokens"],
                           trained_tokens=s["compute/trained_tokens"])}
    if s["compute/reference_tokens"]:
        parts["reference"] = part(params if reference_params is None else reference_params,
                                  forward_tokens=s["compute/reference_tokens"])
    return total(parts, seconds, steps=len(steps))


def sft_compute(rows: Iterable[Mapping[str, float]], params: int, *, teacher_params: int | None = None) -> dict:
    """An SFT loop's share from its metrics lines: ``6 N`` per token trained (prompt and answer: the forward
    runs over both); with a teacher scoring the same tokens (logit KL, feature distillation) its ``2 N``.
    A line without ``tokens_processed`` (written before it existed) is read from tokens/s x seconds."""
    n = 0
    for r in rows:
        if r.get("step", 0) <= 0:
            continue
        tokens = r.get("tokens_processed")
        if tokens is None and r.get("tokens_per_second") is not None and r.get("train_seconds") is not None:
            tokens = r["tokens_per_second"] * r["train_seconds"]
        n += int(round(tokens or 0))
    parts = {"sft": part(params, trained_tokens=n)}
    if teacher_params:
        parts["teacher_scoring"] = part(teacher_params, forward_tokens=n)
    return parts


def steps_for_budget(budget_flops: float, step_flops: float) -> int:
    """The fewest steps of ``step_flops`` each whose sum reaches ``budget_flops`` (at least 1)."""
    if step_flops <= 0:
        raise ValueError(f"steps_for_budget: a step must cost something, got {step_flops} FLOPs")
    return max(1, math.ceil(budget_flops / step_flops - 1e-9))


def grpo_step_flops_bound(params: int, prompt_lengths: Sequence[int], *, prompts_per_step: int, group_size: int,
                          max_new_tokens: int, epochs: int = 1, scored: bool = False,
                          reference: bool = False) -> float:
    """The most one GRPO step can cost (every response ``max_new_tokens`` long, every row trained, the
    longest prompt; ``scored``: the old-logprob forward, ``reference``: a reference model of the same size):
    so :func:`steps_for_budget` with it gives the fewest steps that can reach a budget."""
    per_group = max(prompt_lengths, default=0) + group_size * max_new_tokens
    return prompts_per_step * per_group * params * (2.0 * (1 + scored + reference) + 6.0 * epochs)
