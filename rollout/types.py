"""Data types handed from a generation engine to the rest of the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: the subset of sampling knobs every engine honours identically."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    logprobs: bool = True  # the sampled token's logprob, per position

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling.n={self.n}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens}: must be >= 1")


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None  # logprob of each sampled token under the engine's policy
    finish_reason: str  # "stop" (EOS / stop string) or "length" (hit max_new_tokens)
    # R3: expert ids the engine's routers chose, [prompt+response-1, moe_layers, k] (row j = token j; the last
    # sampled token never went through a forward), uint8 (<= 256 experts) or uint16; a row of the dtype's
    # max (sentinel) means unknown: the trainer routes that token itself. None for dense models / capture off.
    routed_experts: "np.ndarray | None" = None
    # R3: the engine's counts for this sample's routing: rows_unknown (rows handed over as the sentinel),
    # rows_missing (rows the engine returned no routing for at all), noncontiguous (capture steps that did not
    # start where the sample's rows ended). None where the engine does not count (dense, capture off, hf).
    routing_counts: dict[str, int] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Generation:
    """All samples for one prompt, with the exact prompt token ids they were conditioned on."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


@dataclass
class RolloutBatch:
    """The one hand-over of an RL step: what was generated, how it was scored, what the trainer optimises.

    Row ``i`` is one sampled response. Rows come in consecutive groups of ``group_size`` responses to the
    same prompt (GRPO's groups). Lists, not tensors, so the batch pickles cheaply across Ray and the
    trainer pads it to whatever layout its kernels like.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    group_size: int
    # Engine's logprob of each response token; a row is None where the engine returned none for it.
    rollout_logprobs: list[list[float] | None] | None = None
    truncated: list[bool] = field(default_factory=list)  # response hit max_new_tokens
    rewards: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)  # False: row takes no part in the loss (e.g. overlong)
    # R3: top-k expert ids per token (prompt + response) per MoE layer, [tokens, moe_layers, k]; None for dense.
    routed_experts: list | None = None
    # R3: the engines' routing counts (Completion.routing_counts) summed over the rows; empty when none counted.
    routing_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        if len(self.prompt_ids) != n:
            raise ValueError(f"RolloutBatch: {len(self.prompt_ids)} prompts for {n} responses")
        if self.group_size < 1 or n % self.group_size:
            raise ValueError(f"RolloutBatch: group_size={self.group_size} does not divide {n} rows")
        for name in ("truncated", "rewards", "advantages", "loss_mask"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ValueError(f"RolloutBatch.{name}: {len(values)} values for {n} rows")
        if self.rollout_logprobs is not None:
            if len(self.rollout_logprobs) != n:
                raise ValueError(f"RolloutBatch.rollout_logprobs: {len(self.rollout_logprobs)} rows for {n} rows")
            for i, (lp, ids) in enumerate(zip(self.rollout_logprobs, self.response_ids)):
                if lp is not None and len(lp) != len(ids):
                    raise ValueError(f"RolloutBatch.rollout_logprobs[{i}]: {len(lp)} values for {len(ids)} tokens")

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def n_tokens(self) -> int:
        """Prompt plus response tokens over all rows (what a training forward pass processes)."""
        return sum(len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids))

    @property
    def n_response_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)
