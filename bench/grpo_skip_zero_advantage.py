"""Cost of a GRPO update with and without skipping the rows whose advantage is 0, on the real model.

    python bench/grpo_skip_zero_advantage.py [--groups 4] [--group-size 8] [--zero-groups 2] [--repeats 2]

A rollout batch shaped like the quickstart's (``--groups`` prompts of the R1 format × ``--group-size``
responses of 40-110 tokens) where ``--zero-groups`` groups got the same reward for every sample. The same
batch is trained from the same weights with ``skip_zero_advantage`` off and on, alternately, ``--repeats``
times each; the script prints seconds per update, their ratio, and the largest weight difference between
the two results (the skip must not change the update), and writes ``bench/results/grpo_skip_zero_advantage.json``.
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
    from pipeline.prompting import render_prompt_ids
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
    figures = {
        "rows": len(batch), "rows_with_zero_advantage": sum(a == 0 for a in batch.advantages),
        "seconds_per_update_skip_off": round(off, 2), "seconds_per_update_skip_on": round(on, 2),
        "speedup": round(off / on, 2), "max_weight_difference": max_diff, "max_weight_change_of_the_update": moved,
        "rows_trained": {"off": results[False]["rows_trained"], "on": results[True]["rows_trained"]},
        "runs": {"off": [round(s, 2) for s in seconds[False]], "on": [round(s, 2) for s in seconds[True]]},
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
