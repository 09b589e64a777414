"""Which rewards decide "correct" and "formatted" in evals, RL's held-out evals and rejection sampling.

``eval.rewards`` names one reward per role (``correctness``, ``format``); a role left out, or given only
options, takes the recipe's own ``rewards.items`` entry of that name with its options, else the built-in
reward. So an R1-distill model is evaluated with ``eval.rewards.correctness.options.answer_format=boxed``,
and a recipe that trains with ``answer_format: auto`` is evaluated (and rejection-sampled) the same way.
"""
from __future__ import annotations

from typing import Any

from stages.evaluate import EvalScoring

from .config import RecipeConfig

# When a role names no reward: the rewards.items names that fill it, in order of preference.
_ROLE_ITEMS = {"correctness": ("correctness", "accuracy"), "format": ("format",)}


def eval_scoring(cfg: RecipeConfig, prefilled_think: bool) -> EvalScoring:
    """The eval's scoring: ``eval.rewards`` over the recipe's ``rewards.items``."""
    roles = cfg.eval.rewards
    return EvalScoring(correctness=role_spec(cfg, "correctness", roles.correctness.name, roles.correctness.options),
                       format=role_spec(cfg, "format", roles.format.name, roles.format.options),
                       prefilled_think=prefilled_think)


def recipe_scoring(cfg: RecipeConfig, prefilled_think: bool) -> EvalScoring:
    """The training rewards' own verdicts (``rewards.items`` alone, no eval overrides): what rejection
    sampling keeps, since its data must follow the layout and extraction the RL model was trained on."""
    return EvalScoring(correctness=role_spec(cfg, "correctness", None, {}),
                       format=role_spec(cfg, "format", None, {}), prefilled_think=prefilled_think)


def role_spec(cfg: RecipeConfig, role: str, name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "options"}`` of one role: the ``rewards.items`` entry named ``name`` (default: the role's
    own names) with ``options`` merged over its options; the built-in reward when no item matches."""
    names = (name,) if name else _ROLE_ITEMS[role]
    item = next((i for n in names for i in cfg.rewards.items if i.name == n), None)
    if item is None:
        return {"name": name or role, "options": dict(options)}
    return {"name": item.name, "options": {**item.options, **options}}
