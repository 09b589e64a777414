"""Data types handed from a generation engine to the rest of the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field


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

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Generation:
    """All samples for one prompt, with the exact prompt token ids they were conditioned on."""

    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)
