"""Rollout Routing Replay (R3) in the training forward: MoE blocks use the experts the rollout engine chose.

transformers 5 MoE blocks hold a router at ``<block>.gate`` that returns ``(router_logits, top_k_weights,
top_k_index)`` and an experts module at ``<block>.experts`` called as ``experts(hidden, top_k_index,
top_k_weights)``. A forward hook on the router swaps in the replayed ``top_k_index`` and recomputes
``top_k_weights`` from the *training* router's logits restricted to those experts, by the gate rule of the
router's family (:data:`GATE_RULES`, by class name: a family not listed is refused, never guessed), so the
router still receives gradients.

What is measured (:func:`routing_metrics`):

- ``router_mismatch_own``: the training router's OWN top-k against the rollout's, per (token, MoE layer), with
  replay on or off. This is the figure R3 is about: how far training would route from the rollout. With
  replay on, a later layer's own choice is taken on hidden states that earlier replayed layers shaped.
- ``token_mismatch_own``: tokens whose own top-k differs from the rollout's in at least one MoE layer.
- ``replay_plumbing_mismatch`` (replay on only): the experts the experts module received against the ids
  replay handed it. It is 0 by construction when the hooks work; anything else means the swap did not reach
  the experts (a plumbing check, not a measure of R3's effect).
- ``routing_coverage`` (:func:`routing_coverage`): the share of (token, MoE layer) pairs for which the
  engine's routing was known. R3 with a coverage of 0 replays nothing and looks like it worked.

Replayed routing is ``[batch, seq, moe_layers, k]`` aligned to the forward's ``input_ids``, uint8 / uint16 as
the engine ships it (a row of the dtype's maximum: unknown) or signed (-1: unknown); it is moved to the model's
device once per forward in that narrow dtype and widened there one layer at a time (:func:`expert_ids`). An
unknown token (padding, the last sampled token, an engine that returned none) is routed by the router itself,
so padding never holds duplicate expert ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch


@dataclass
class MoEBlock:
    """One MoE layer of a model: its decoder-layer index, router and experts modules."""

    layer: int
    router: torch.nn.Module
    experts: torch.nn.Module


def moe_blocks(model: torch.nn.Module) -> list[MoEBlock]:
    """The model's MoE blocks in layer order (dense layers of mixed models are left out)."""
    blocks = []
    for name, module in model.named_modules():
        router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
        if router is None or experts is None or not hasattr(router, "top_k") or not hasattr(router, "weight"):
            continue
        match = re.search(r"layers\.(\d+)\.", name + ".")
        blocks.append(MoEBlock(int(match.group(1)) if match else len(blocks), router, experts))
    return sorted(blocks, key=lambda b: b.layer)


# ------------------------------------------------------------------------------------------- gate rules
# Each rule gathers at the replayed experts from the full score vector, never from a tensor already zeroed
# outside the training top-k, so every replayed expert's weight keeps its gradient. Replaying the router's
# own choice reproduces its own weights exactly (tested per family).
def _softmax_renormalised(router, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Mixtral: softmax over all experts, gathered at the k chosen, renormalised over them (fp32)."""
    weights = torch.softmax(logits.float(), dim=-1).gather(1, indices)
    return weights / weights.sum(dim=-1, keepdim=True)


def _softmax_qwen(router, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Qwen2/3-MoE: softmax gathered at the k chosen, renormalised only under ``norm_topk_prob``, handed back
    in the logits' dtype."""
    weights = torch.softmax(logits.float(), dim=-1).gather(1, indices)
    if router.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype)


def _sigmoid_scaled(router, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3: sigmoid scores (the selection bias only chooses experts) gathered at the k chosen,
    renormalised under ``norm_topk_prob``, times ``routed_scaling_factor``."""
    weights = logits.float().sigmoid().gather(1, indices)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor


# Router class name -> its gate rule. Explicit on purpose: a family whose rule differs (DeepSeek-V2's softmax
# without renormalisation times routed_scaling_factor, GPT-OSS's softmax over the top-k logits, ...) would be
# replayed with wrong weights if its rule were guessed from the attributes it happens to have.
GATE_RULES: dict[str, Callable[..., torch.Tensor]] = {
    "MixtralTopKRouter": _softmax_renormalised,
    "Qwen2MoeTopKRouter": _softmax_qwen,
    "Qwen3MoeTopKRouter": _softmax_qwen,
    "DeepseekV3TopkRouter": _sigmoid_scaled,
}


def gate_rule(router: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """The gate rule of ``router``'s family; a router class not in :data:`GATE_RULES` is refused in one line."""
    name = type(router).__name__
    if name not in GATE_RULES:
        raise ValueError(f"routing replay: router class {name} has no known gate-weight rule (known families: "
                         f"{', '.join(GATE_RULES)}); add its rule to trainer.routing_replay.GATE_RULES rather "
                         "than replay it with another family's weights")
    return GATE_RULES[name]


def replayed_weights(router: torch.nn.Module, router_logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The gate weights of ``indices`` ([tokens, k]) from the training router's ``router_logits``, by the
    router family's rule (:data:`GATE_RULES`)."""
    return gate_rule(router)(router, router_logits, indices)


# ------------------------------------------------------------------------------------------- the hooks
# Counters of :meth:`RoutingReplay.take_counts`, a fixed list (a trainer group all-reduces exactly these).
COUNT_NAMES = ("routers", "routers_differ_own", "tokens", "tokens_differ_own", "routers_replayed",
               "routers_plumbing_differ")


def expert_ids(routing: torch.Tensor) -> torch.Tensor:
    """``[..., k]`` routing as long expert ids, -1 where unknown: an unsigned routing tensor's rows of the
    dtype's maximum (:func:`trainer.routing_layout.routing_tensor`), a signed one's -1s as they are."""
    ids = routing.long()
    if not routing.dtype.is_signed:  # unknown: the dtype's maximum (rollout.routing_capture.sentinel_of)
        ids = ids.masked_fill((ids == torch.iinfo(routing.dtype).max).all(dim=-1, keepdim=True), -1)
    return ids


class RoutingReplay:
    """Hooks on a model's MoE blocks: replay a given routing (or only compare with it), and count mismatches.

    :meth:`set` the routing before a forward and :meth:`clear` it after the backward: with gradient
    checkpointing the backward re-runs each layer's forward, and that re-run must route as the first did.
    Counting is on while :attr:`measuring` is True; switch it off before a backward so re-runs count once.
    Replaying refuses a router family whose gate rule is not known (:func:`gate_rule`), at the first
    :meth:`set` with replay on; comparing (``enabled`` False) needs no gate weights and works for any family,
    so an unknown MoE still loads, trains by SFT and reports its router mismatch.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.blocks = moe_blocks(model)
        self._routing: torch.Tensor | None = None
        self.enabled = True  # replay the set routing; False: only compare the model's own routing with it
        self.measuring = False
        self.coverage: float | None = None  # routing_coverage of the last update's batch (None: no routing)
        self._counts: dict[str, list[torch.Tensor]] = {}
        self._token_diff: list[torch.Tensor] = []  # this forward's per-layer "own top-k differs", per token
        for j, block in enumerate(self.blocks):
            block.router.register_forward_hook(self._router_hook(j))
            block.experts.register_forward_pre_hook(self._experts_hook(j))

    @property
    def is_moe(self) -> bool:
        return bool(self.blocks)

    @property
    def top_k(self) -> int:
        return int(self.blocks[0].router.top_k)

    @property
    def num_experts(self) -> int:
        return int(self.blocks[0].router.weight.shape[0])

    def set(self, routing: torch.Tensor | None, *, measure: bool = True) -> None:
        """Use ``routing`` ([batch, seq, moe_layers, k], -1 = unknown) in the following forwards: replay it, or
        only compare the model's own routing with it while :attr:`enabled` is False."""
        if routing is not None and (routing.dim() != 4 or tuple(routing.shape[2:]) != (len(self.blocks), self.top_k)):
            raise ValueError(f"routing replay: routing of shape {tuple(routing.shape)}, expected "
                             f"[batch, seq, {len(self.blocks)}, {self.top_k}]")
        if routing is not None and self.enabled:
            for block in self.blocks:  # before the forward: refused in one line, never replayed mis-weighted
                gate_rule(block.router)
        if routing is not None:  # one copy to the model's device per forward, in the narrow dtype
            routing = routing.to(self.blocks[0].router.weight.device)
        self._routing, self.measuring = routing, measure and routing is not None

    def clear(self) -> None:
        self._routing, self.measuring = None, False

    def take_counts(self) -> dict[str, float]:
        """Counts since the last call (:data:`COUNT_NAMES`): ``routers`` ((token, layer) pairs with a known
        rollout routing), ``routers_differ_own`` (the training router's own top-k differs from the rollout's),
        ``tokens`` (known in every layer), ``tokens_differ_own`` (own top-k differs in at least one layer),
        and under replay ``routers_replayed`` / ``routers_plumbing_differ`` (the experts module received other
        ids than replay handed it: must stay 0)."""
        counts, self._counts = self._counts, {}
        return {k: float(torch.stack(v).sum()) for k, v in counts.items()}

    def _count(self, name: str, value: torch.Tensor) -> None:
        self._counts.setdefault(name, []).append(value.detach().sum().to("cpu", torch.float64))

    def _given(self, j: int, n_tokens: int, device) -> torch.Tensor:
        given = expert_ids(self._routing[:, :, j].reshape(-1, self._routing.shape[-1]).to(device))
        if given.shape[0] != n_tokens:
            raise ValueError(f"routing replay: the forward routes {n_tokens} tokens, the replayed routing holds "
                             f"{given.shape[0]} (its layout does not match the input ids)")
        return given

    def _router_hook(self, j: int):
        def hook(router, inputs, output):
            if self._routing is None:
                return None
            logits, _, own = output
            given = self._given(j, own.shape[0], own.device)
            known = (given >= 0).all(dim=-1)
            if self.measuring:
                differ = known & _sets_differ(own, given)
                self._count("routers", known)
                self._count("routers_differ_own", differ)
                self._count_tokens(j, differ, known)
            if not self.enabled:
                return None
            indices = torch.where(known.unsqueeze(-1), given, own)
            return logits, replayed_weights(router, logits, indices), indices
        return hook

    def _count_tokens(self, j: int, differ: torch.Tensor, known: torch.Tensor) -> None:
        """Per token over one forward's MoE layers: known in all, own top-k differing in any."""
        if j == 0:
            self._token_diff = []
        self._token_diff.append(torch.stack([differ, known]))
        if j == len(self.blocks) - 1:  # the forward's last MoE layer: aggregate per token
            per_layer = torch.stack(self._token_diff)  # [layers, 2, tokens]
            known_all = per_layer[:, 1].all(dim=0)
            self._count("tokens", known_all)
            self._count("tokens_differ_own", known_all & per_layer[:, 0].any(dim=0))
            self._token_diff = []

    def _experts_hook(self, j: int):
        def hook(experts, args):
            if self._routing is None or not self.measuring or not self.enabled or len(args) < 2:
                return None
            used = args[1]
            given = self._given(j, used.shape[0], used.device)
            known = (given >= 0).all(dim=-1)
            self._count("routers_replayed", known)
            self._count("routers_plumbing_differ", known & _sets_differ(used, given))
            return None
        return hook


def _sets_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, whether the expert sets of ``a`` and ``b`` ([tokens, k]) differ (order within a row ignored)."""
    return (a.sort(dim=-1).values != b.to(a.dtype).sort(dim=-1).values).any(dim=-1)


def routing_metrics(counts: Mapping[str, float], coverage: float | None = None) -> dict[str, float]:
    """:meth:`RoutingReplay.take_counts` (and the batch's :func:`routing_coverage`) -> ``router_mismatch_own``,
    ``token_mismatch_own``, ``replay_plumbing_mismatch`` (replay on), ``routing_coverage``; a figure whose
    denominator is 0 is left out."""
    out = {} if coverage is None else {"routing_coverage": coverage}
    if counts.get("routers"):
        out["router_mismatch_own"] = counts.get("routers_differ_own", 0.0) / counts["routers"]
    if counts.get("tokens"):
        out["token_mismatch_own"] = counts.get("tokens_differ_own", 0.0) / counts["tokens"]
    if counts.get("routers_replayed"):
        out["replay_plumbing_mismatch"] = counts.get("routers_plumbing_differ", 0.0) / counts["routers_replayed"]
    return out


# ----------------------------------------------------------------------------------------- coverage
def known_pairs(rows: np.ndarray) -> np.ndarray:
    """``[tokens, layers]`` bool: the (token, MoE layer) pairs of one sample's routing that are known. Unknown:
    all k ids equal the dtype's maximum (the engine's sentinel) or any id negative, as the trainer reads them
    (:func:`trainer.routing_layout.routing_tensor`)."""
    rows = np.asarray(rows)
    marker = np.iinfo(rows.dtype).max if np.issubdtype(rows.dtype, np.integer) else -1
    return ~((rows == marker).all(axis=-1) | (rows < 0).any(axis=-1))


def routing_coverage(routing: Sequence[np.ndarray | None], prompt_lens: Sequence[int],
                     response_lens: Sequence[int], moe_layers: int) -> float | None:
    """Share of (token, MoE layer) pairs whose rollout routing is known, over the tokens of each row whose
    routing shapes a scored logprob: prompt + response - 1 (the last sampled token never went through the
    engine, and its own output is not scored). Padding is never counted. A row without routing (None) or with
    fewer rows counts its missing pairs as unknown. None when there are no such tokens."""
    known = total = 0
    for rows, p, r in zip(routing, prompt_lens, response_lens):
        tokens = max(p + r - 1, 0)
        total += tokens * moe_layers
        if rows is None or tokens == 0:
            continue
        if rows.ndim != 3 or rows.shape[1] != moe_layers:
            raise ValueError(f"routed_experts: shape {tuple(rows.shape)}, expected [tokens, {moe_layers}, k] "
                             "(the training model's MoE layers)")
        known += int(known_pairs(rows[:tokens]).sum())
    return known / total if total else None


def check_coverage(coverage: float | None, minimum: float, engine_counts: Mapping[str, float] | None = None) -> None:
    """Refuse, in one line, an update that would replay a routing known for less than ``minimum`` of its pairs."""
    if coverage is None or coverage >= minimum:
        return
    seen = "" if not engine_counts else (" (engine: " + ", ".join(f"{k} {int(v)}" for k, v in
                                                                    sorted(engine_counts.items())) + ")")
    raise ValueError(f"rl.routing_min_coverage={minimum}: the rollout routing is known for only {coverage:.1%} of "
                     f"the batch's (token, MoE layer) pairs{seen}, so R3 would let the trainer route the rest "
                     "itself; likely cause: the engine returned no routed_experts (vLLM without routing capture / "
                     "enable_return_routed_experts) or rollout.routing_capture is off")


def update_routing(replay: RoutingReplay | None, batch, keep: Sequence[int], settings, model_dir: str) -> list | None:
    """The rollout routing of a GRPO update's kept rows when its forwards should see it: replayed under
    ``settings.routing_replay``, otherwise only compared (the mismatch figures of a run without R3). Sets
    ``replay.coverage``; with replay on, a batch below ``settings.routing_min_coverage`` is refused here,
    before any forward or optimizer step."""
    if replay is None:
        if settings.routing_replay:
            raise ValueError(f"rl.routing_replay=true: {model_dir} has no MoE layers to replay")
        return None
    replay.coverage = None
    if batch.routed_experts is None:
        if settings.routing_replay:
            raise ValueError("rl.routing_replay=true but the rollout batch carries no routed_experts "
                             "(start the engine with routing capture: rollout.routing_capture)")
        return None
    routing = [batch.routed_experts[i] for i in keep]
    replay.coverage = routing_coverage(routing, [len(batch.prompt_ids[i]) for i in keep],
                                       [len(batch.response_ids[i]) for i in keep], len(replay.blocks))
    if settings.routing_replay:
        check_coverage(replay.coverage, settings.routing_min_coverage, getattr(batch, "routing_counts", None))
    replay.enabled = settings.routing_replay
    return routing
