"""Cost of a GRPO update with and without skipping the rows whose advantage is 0, on the real model.

    python bench/grpo_skip_zero_advantage.py [--groups 4] [--group-size 8] [--zero-groups 2] [--repeats 2]

A rollout batch shaped like the quickstart's (``--groups`` prompts of the R1 format × ``--group-size``
responses of 40-110 tokens) where ``--zero-groups`` groups got the same reward for every sample. The same
batch is trained from the same weights with ``skip_zero_advantage`` off and on, alternately, ``--repeats``
times each; the script prints seconds per update and their ratio.

Then it checks that the skip does not change the update, on the gradient itself: one more (untimed) update
each way, from the same weights, records the accumulated gradient as the optimizer step receives it (before
clipping) and compares the two. Comparing the weights after one fresh AdamW step cannot show this: Adam's
first step is ~lr * sign(g) and clipping rescales g, so a gradient mis-weighted by any constant (e.g. a
token-mean denominator that forgot the skipped rows) gives the same weights. The JSON records the gradient
norms, their ratio, the cosine and the largest relative difference (a mis-weighted gradient moves the ratio
off 1 by the skipped share), next to the (scale-blind) weight difference. Writes
``bench/results/grpo_skip_zero_advantage.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rollout.types import RolloutBatch  # noqa: E402
from trainer.losses import grpo_advantages  # noqa: E402
from trainer.policy import PolicyTrainer  # noqa: E402
from trainer.settings import GRPOSettings, TrainerSettings  # noqa: E402


def make_batch(tokenizer, groups: int, group_size: int, zero_groups: int, seed: int = 0) -> RolloutBatch:
    """Prompts rendered with the R1 system prompt; random responses; rewards all-equal in ``zero_groups``."""
    from pipeline.config import R1_SYSTEM_PROMPT
    from tasks.prompting import render_prompt_ids
    from tasks.arithmetic import generate_arithmetic

    rng = random.Random(seed)
    samples = generate_arithmetic(groups, seed=seed)
    prompt_ids, response_ids, rewards = [], [], []
    for g, sample in enumerate(samples):
        prompt = render_prompt_ids(tokenizer, sample, R1_SYSTEM_PROMPT)
        for _ in range(group_size):
            prompt_ids.append(prompt)
            response_ids.append([rng.randrange(100, 20000) for _ in range(rng.randint(40, 110))])
            rewards.append(1.0 if g < zero_groups else float(rng.random() < 0.5))
        if g >= zero_groups and len(set(rewards[-group_size:])) == 1:
            rewards[-1] = 1.0 - rewards[-1]  # a group meant to carry signal must not be all-equal by chance
    adv = grpo_advantages(torch.tensor(rewards), group_size, "group").tolist()
    return RolloutBatch(prompt_ids=prompt_ids, response_ids=response_ids, group_size=group_size,
                        rollout_logprobs=None, truncated=[False] * len(rewards), rewards=rewards, advantages=adv)


def capture_gradients(trainer: PolicyTrainer) -> list[dict[str, torch.Tensor]]:
    """Record, at every optimizer step, the accumulated gradients the step receives (before clipping)."""
    seen: list[dict[str, torch.Tensor]] = []
    original = trainer._optimizer_step

    def step():
        seen.append({n: p.grad.detach().float().clone() for n, p in trainer.model.named_parameters()
                     if p.grad is not None})
        return original()

    trainer._optimizer_step = step
    return seen


def compare_gradients(off: dict[str, torch.Tensor], on: dict[str, torch.Tensor]) -> dict:
    """How far the skip-on gradient is from the skip-off one: norms, their ratio, cosine, largest differences.

    Scale-sensitive, unlike the weights after an Adam step: a gradient mis-weighted by a constant c shows
    as ``norm_ratio_on_over_off`` = c. Equal updates give ratio 1 and cosine 1 up to bf16 noise (the skip
    changes which rows share a micro-batch, hence the padding and the order of the sums)."""
    names = sorted(set(off) | set(on))
    missing = [n for n in names if n not in off or n not in on]
    common = [n for n in names if n in off and n in on]
    norm_off = float(torch.sqrt(sum((off[n] ** 2).sum() for n in common)))
    norm_on = float(torch.sqrt(sum((on[n] ** 2).sum() for n in common)))
    dot = float(sum((off[n] * on[n]).sum() for n in common))
    diff = float(torch.sqrt(sum(((on[n] - off[n]) ** 2).sum() for n in common)))
    return {
        "compared": "accumulated gradient at the optimizer step, before clipping (skip on vs off)",
        "grad_norm_off": norm_off, "grad_norm_on": norm_on,
        "norm_ratio_on_over_off": norm_on / norm_off if norm_off else float("nan"),
        "cosine": dot / (norm_off * norm_on) if norm_off and norm_on else float("nan"),
        "relative_l2_difference": diff / norm_off if norm_off else float("nan"),
        "max_abs_difference": max(float((on[n] - off[n]).abs().max()) for n in common),
        "max_abs_gradient": max(float(off[n].abs().max()) for n in common),
        "parameters_with_a_gradient_only_one_way": missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--zero-groups", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_skip_zero_advantage.json"))
    args = parser.parse_args()
    from trainer.model_io import resolve_model

    trainer = PolicyTrainer(resolve_model(args.model), TrainerSettings(precision="bf16"))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    optimizer_start = trainer.optimizer.state_dict()
    batch = make_batch(trainer.tokenizer, args.groups, args.group_size, args.zero_groups)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for skip in (False, True):
            trainer.model.load_state_dict(start)
            trainer.optimizer.load_state_dict(optimizer_start)
            t0 = time.perf_counter()
            metrics = trainer.train_grpo(batch, GRPOSettings(tis_cap=None, skip_zero_advantage=skip))
            seconds[skip].append(time.perf_counter() - t0)
            results[skip] = {"rows_trained": metrics["rows_trained"],
                             "state": {k: v.clone() for k, v in trainer.model.state_dict().items()}}
    max_diff = max(float((results[True]["state"][k] - results[False]["state"][k]).abs().max()) for k in start)
    moved = max(float((results[False]["state"][k] - start[k]).abs().max()) for k in start)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    grads = {}
    for skip in (False, True):  # untimed: cloning every gradient costs time of its own
        trainer.model.load_state_dict(start)
        trainer.optimizer.load_state_dict(optimizer_start)
        seen = capture_gradients(trainer)
        trainer.train_grpo(batch, GRPOSettings(tis_cap=None, skip_zero_advantage=skip))
        (grads[skip],) = seen
        del trainer._optimizer_step  # back to the class's method
    figures = {
        "rows": len(batch), "rows_with_zero_advantage": sum(a == 0 for a in batch.advantages),
        "seconds_per_update_skip_off": round(off, 2), "seconds_per_update_skip_on": round(on, 2),
        "speedup": round(off / on, 2),
        "gradient_check": compare_gradients(grads[False], grads[True]),
        "max_weight_difference": max_diff, "max_weight_change_of_the_update": moved,
        "weight_check_note": "one fresh AdamW step with clipping: blind to the gradient's scale; see gradient_check",
        "rows_trained": {"off": results[False]["rows_trained"], "on": results[True]["rows_trained"]},
        "runs": {"off": [round(s, 2) for s in seconds[False]], "on": [round(s, 2) for s in seconds[True]]},
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
