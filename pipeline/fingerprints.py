"""What decides a stage's outputs, as two hashes that `r1 run` compares with a stage's manifest.

- The TRAINING fingerprint: the config parts the stage's training reads (its sections, the data that feeds
  it, the model, the seed, the rollout settings that change what is sampled) and its inputs' training
  fingerprints. A change re-trains the stage (its old folder is moved aside, never removed).
- The EVAL fingerprint: what the held-out eval of the stage's model reads (``eval``, the held-out data, the
  system prompt and template, the rewards it scores with, ``rewards.prefilled_think``, the sampling rollout settings,
  the seed). A change re-runs the
  eval only, and nothing downstream: later stages depend on training fingerprints alone.

Engine-capacity knobs (:data:`CAPACITY_KNOBS`) are in neither: they decide how much the engine decodes at
once, not the distribution it samples from. Pure functions of the config; no file is read here.
"""
from __future__ import annotations

import copy
import hashlib
import json

from .config import RecipeConfig

# Rollout settings that size or lay out the engine and leave its sampling distribution alone. (On CPU,
# without per-request seeds, a different batch can hand a sequence different random draws: same
# distribution, so nothing re-runs.) Every other rollout field counts, new ones included.
CAPACITY_KNOBS = frozenset({"max_num_seqs", "kv_cache_gb", "enforce_eager", "gpu_memory_utilization",
                            "tensor_parallel_size", "sleep_level", "enable_prefix_caching"})

# Settings that stop a run or say where to log, never change a finished stage's outputs.
_NO_EFFECT = ("rewards.fail_after",)

# An RL section's in-loop held-out evals: on CPU they draw from the engine's sampling RNG between training
# steps, so when they run they change the trained model too.
_LOOP_EVAL_KNOBS = ("eval_every", "eval_at_ends")


def _part(tree: dict, dotted: str):
    node = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def sampling_rollout(tree: dict) -> dict:
    """``rollout`` without its capacity knobs: engine, dtype, max_model_len, temperature, top_p, ..."""
    return {k: v for k, v in (tree.get("rollout") or {}).items() if k not in CAPACITY_KNOBS}


def _builtin(entry: dict) -> bool:
    # Built-in generators split by prompt hash: their train set does not depend on n_test (tasks.splits).
    return entry.get("source") in (None, "builtin")


def _train_view(tasks: list[dict] | None) -> list[dict]:
    return [{k: v for k, v in t.items() if not (k == "n_test" and _builtin(t))} for t in tasks or ()]


def _test_view(tasks: list[dict] | None) -> list[dict]:
    # A test set never depends on n_train (tasks.splits.make_splits).
    return [{k: v for k, v in t.items() if k != "n_train"} for t in tasks or ()]


def _sources(tree: dict, role: str) -> list[dict]:
    return [s for s in _part(tree, "data.sources") or () if s.get("role", "train") == role]


def data_part(tree: dict, which: str):
    """One data part a stage may read: ``train`` / ``test`` (``data.tasks`` and the ``data.sources`` of that
    role), ``general`` / ``general_test`` (``general_rl.general_tasks``), ``system_prompt`` (with
    ``data.template``: how every prompt is rendered)."""
    tasks, general = _part(tree, "data.tasks"), _part(tree, "general_rl.general_tasks")
    if which == "train":
        return {"tasks": _train_view(tasks), "sources": _sources(tree, "train")}
    if which == "test":
        return {"tasks": _test_view(tasks), "sources": _sources(tree, "test")}
    if which == "general":
        return _train_view(general)
    if which == "general_test":
        return _test_view(general)
    if which == "system_prompt":  # how prompts are rendered: the system prompt, and a template other than chat
        template = _part(tree, "data.template") or "chat"
        system_prompt = _part(tree, "data.system_prompt")
        # chat (the default) hashes as before the templates existed: runs made then stay done.
        return system_prompt if template == "chat" else {"system_prompt": system_prompt, "template": template}
    raise ValueError(f"unknown data part {which!r}; parts: train, test, general, general_test, system_prompt")


def _section(tree: dict, dotted: str, drops: tuple[str, ...]):
    """A config part; ``rollout`` without capacity knobs; the dotted keys ``drops`` inside it left out."""
    value = sampling_rollout(tree) if dotted == "rollout" else copy.deepcopy(_part(tree, dotted))
    for drop in drops:
        if drop.startswith(dotted + ".") and isinstance(value, dict):
            node, path = value, drop[len(dotted) + 1:].split(".")
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
    return value


def _eval_settings(tree: dict) -> dict:
    ev = dict(tree.get("eval") or {})
    ev.pop("general_stages", None)  # which stages see the general tasks: decided per stage, below
    return ev


# The rewards.items names an eval role falls back to (pipeline.eval_rewards), besides the names eval.rewards gives.
_EVAL_ROLE_ITEMS = ("correctness", "accuracy", "format")


def eval_rewards(tree: dict) -> dict:
    """What the eval scores with: ``rewards.items`` entries an eval role can take (with their options),
    ``rewards.plugins`` (they register names) and ``rewards.prefilled_think``. ``eval.rewards`` itself is part
    of the eval settings. Weights and the other rewards do not decide "correct" or "formatted"."""
    roles = _part(tree, "eval.rewards") or {}
    names = {*_EVAL_ROLE_ITEMS, *(r.get("name") for r in roles.values() if isinstance(r, dict) and r.get("name"))}
    items = [{k: v for k, v in item.items() if k != "weight"} for item in _part(tree, "rewards.items") or ()
             if item.get("name") in names]
    return {"items": items, "plugins": _part(tree, "rewards.plugins"),
            "prefilled_think": _part(tree, "rewards.prefilled_think")}


def loop_evaluates(tree: dict, section: str) -> bool:
    """Whether the RL section ``section`` runs held-out evals between its training steps."""
    knobs = _part(tree, section) or {}
    return any(knobs.get(k) for k in _LOOP_EVAL_KNOBS)


def training_parts(cfg: RecipeConfig, stage) -> dict:
    """The config parts the training of ``stage`` (a :class:`pipeline.recipe.Stage`) reads, by name."""
    tree = cfg.model_dump(mode="json")
    parts = {"run.seed": _part(tree, "run.seed"), "model": _part(tree, "model")}
    for dotted in stage.sections:
        # The stage's own-eval switch (cold_start.eval) decides whether the stage command evaluates, not
        # what it trains.
        parts[dotted] = _section(tree, dotted, (*_NO_EFFECT, *((stage.own_eval,) if stage.own_eval else ())))
        if isinstance(parts[dotted], dict) and "general_tasks" in parts[dotted]:  # general_rl: n_test is eval's
            parts[dotted]["general_tasks"] = _train_view(parts[dotted]["general_tasks"])
    replaced = bool(stage.data_from and _part(tree, stage.data_from))  # the user's dataset instead of these
    for which in stage.data:
        if not (replaced and which in ("train", "general")):  # the system prompt may still render its rows
            parts[f"data:{which}"] = data_part(tree, which)
    if stage.loop_eval and loop_evaluates(tree, stage.loop_eval):
        parts["eval"] = _eval_settings(tree)
        parts["data:test"] = data_part(tree, "test")
        if "general" in stage.data:
            parts["data:general_test"] = data_part(tree, "general_test")
        parts.setdefault("data:system_prompt", data_part(tree, "system_prompt"))
        parts.setdefault("rollout", sampling_rollout(tree))
    return parts


def eval_parts(cfg: RecipeConfig, stage: str | None, *, split: str = "test") -> dict:
    """The config parts the held-out eval of ``stage``'s model reads: `r1 run`'s eval (``split`` test, the
    general tasks where ``eval.general_stages`` names the stage) or, with ``stage`` None, the eval of a
    stage command (its ``eval.split``, every task: :func:`pipeline.data.eval_samples`)."""
    tree = cfg.model_dump(mode="json")
    general_stages = _part(tree, "eval.general_stages")
    with_general = general_stages is None or stage is None or stage in general_stages
    if split == "test":
        held_out = {"data": data_part(tree, "test"), "general": data_part(tree, "general_test") if with_general else None}
    else:
        held_out = {"data": data_part(tree, "train"), "general": data_part(tree, "general") if with_general else None}
    return {"eval": {**_eval_settings(tree), "split": split}, "held_out": held_out,
            "system_prompt": data_part(tree, "system_prompt"), "rollout": sampling_rollout(tree),
            "run.seed": _part(tree, "run.seed"), "rewards": eval_rewards(tree)}


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def training_fingerprint(cfg: RecipeConfig, stage, upstream: dict[str, str | None]) -> str:
    """Hash of :func:`training_parts` and of the training fingerprints of the stages ``stage`` reads from."""
    return _digest({"stage": stage.name, "parts": training_parts(cfg, stage),
                    "inputs": {name: upstream.get(name) for name in stage.inputs}})


def eval_fingerprint(cfg: RecipeConfig, stage: str | None, *, split: str = "test") -> str:
    """Hash of :func:`eval_parts`: equal for two configs whose held-out evals of one model are the same."""
    return _digest({"eval": eval_parts(cfg, stage, split=split)})
