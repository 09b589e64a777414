"""The pieces every config section is built from: strict models, one-line errors, and the one precedence
rule of a stage's ``optim`` / ``sampling`` block over the run-wide values."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from trainer.settings import OptimKnobs

# The stages of `r1 run` that produce a model, hence a held-out eval (pipeline.recipe.STAGES, in order).
EVALUATED_STAGES = ("base", "cold_start", "reasoning_rl", "sft", "general_rl", "distill", "student_rl")

R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)


class ConfigError(ValueError):
    """A config problem, said in one line that names the field, the value and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingKnobs(_Strict):
    """How a stage samples: the run-wide values live in ``rollout``, a stage's ``sampling`` block sets its own."""

    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1)


def _block(knobs: type[BaseModel], name: str) -> type[BaseModel]:
    """The stage form of ``knobs``: the same fields, each null by default. THE precedence rule, for every
    stage's ``optim`` and ``sampling`` block: a field the stage sets wins; a null one takes the run-wide
    value (``trainer.optim.<field>``, ``rollout.<field>``). :func:`resolve` applies it."""
    fields = {n: (f.annotation | None, Field(None, description=f.description)) for n, f in knobs.model_fields.items()}

    def check(self):  # a value the block sets must be one the knobs take: fail at load time, in one line
        try:
            resolve(self, knobs())
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"{err['loc'][0]}={err['input']!r}: {err['msg']}") from None
        return self

    block = create_model(name, __base__=_Strict, __validators__={"check": model_validator(mode="after")(check)},
                         **fields)
    block.__doc__ = (f"A stage's {knobs.__name__} block: a null field takes the run-wide value.")
    block.knobs = knobs
    return block


OptimBlock = _block(OptimKnobs, "OptimBlock")
SamplingBlock = _block(SamplingKnobs, "SamplingBlock")


def resolve(block: BaseModel, run_wide: BaseModel):
    """``block``'s set fields over ``run_wide``'s (the one precedence rule), validated as the full knobs."""
    knobs = type(block).knobs
    merged = {**{n: getattr(run_wide, n) for n in knobs.model_fields},
              **{n: v for n, v in block.model_dump().items() if v is not None}}
    return knobs.model_validate(merged)

