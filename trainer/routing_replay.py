"""Rollout Routing Replay (R3) in the training forward: MoE blocks use the experts the rollout engine chose.

transformers 5 MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3 and the families built on them) hold
a router at ``<block>.gate`` that returns ``(router_logits, top_k_weights, top_k_index)`` and an experts
module at ``<block>.experts`` called as ``experts(hidden, top_k_index, top_k_weights)``. A forward hook on the
router swaps in the replayed ``top_k_index`` and recomputes ``top_k_weights`` from the *training* router's
logits restricted to those experts, normalised the way the family does it, so the router still receives
gradients. A forward pre-hook on the experts records the experts a forward really used: the measurement
that replay held, taken after the swap and not from the replayed ids themselves.

Replayed routing is ``[batch, seq, moe_layers, k]`` (long) aligned to the forward's ``input_ids``; ``-1``
marks a token whose routing is unknown (padding, the last sampled token), which the router then routes
itself, so padding never holds duplicate expert ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


def replayed_weights(router: torch.nn.Module, router_logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The gate weights of ``indices`` ([tokens, k]) from the training router's ``router_logits``.

    Softmax routers (Mixtral, Qwen2/3-MoE): the full softmax gathered at the replayed experts, renormalised
    over them where the family renormalises its top-k (Mixtral always; Qwen by ``norm_topk_prob``); the same
    as a softmax over the logits restricted to the replayed set. Sigmoid routers with a selection bias
    (DeepSeek-V3): the bias only chooses experts, so the sigmoid scores are gathered, renormalised if the
    family does, and scaled by ``routed_scaling_factor``. Gathering never reads a tensor already zeroed outside
    the training top-k, so every replayed expert's weight keeps its gradient.
    """
    if hasattr(router, "e_score_correction_bias"):
        scores = router_logits.float().sigmoid()
        weights = scores.gather(1, indices)
        if getattr(router, "norm_topk_prob", False):
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * router.routed_scaling_factor
    weights = torch.softmax(router_logits.float(), dim=-1).gather(1, indices)
    if getattr(router, "norm_topk_prob", True):
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if hasattr(router, "norm_topk_prob"):  # the Qwen routers hand back weights in the logits' dtype
        weights = weights.to(router_logits.dtype)
    return weights


class RoutingReplay:
    """Hooks on a model's MoE blocks: replay a given routing (or only compare with it), and count mismatches.

    :meth:`set` the routing before a forward and :meth:`clear` it after the backward: with gradient
    checkpointing the backward re-runs each layer's forward, and that re-run must route as the first did.
    Counting is on while :attr:`measuring` is True; switch it off before a backward so re-runs count once.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.blocks = moe_blocks(model)
        self._routing: torch.Tensor | None = None
        self.enabled = True  # replay the set routing; False: only compare the model's own routing with it
        self.measuring = False
        self._counts: dict[str, list[torch.Tensor]] = {}
        self._token_diff: list[torch.Tensor] = []  # this forward's per-layer "used experts differ", per token
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
        self._routing, self.measuring = routing, measure and routing is not None

    def clear(self) -> None:
        self._routing, self.measuring = None, False

    def take_counts(self) -> dict[str, float]:
        """Counts since the last call: ``routers`` ((token, layer) pairs with a known rollout routing),
        ``routers_differ`` (the experts used differ from the rollout's), ``routers_differ_unreplayed`` (the
        training router's own top-k differs: what replay prevents), ``routers_replayed``, ``tokens`` (known in
        every layer) and ``tokens_differ`` (used experts differ in at least one layer)."""
        counts, self._counts = self._counts, {}
        return {k: float(torch.stack(v).sum()) for k, v in counts.items()}

    def _count(self, name: str, value: torch.Tensor) -> None:
        self._counts.setdefault(name, []).append(value.detach().sum().to("cpu", torch.float64))

    def _given(self, j: int, n_tokens: int, device) -> torch.Tensor:
        given = self._routing[:, :, j].reshape(-1, self._routing.shape[-1]).to(device)
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
                self._count("routers", known)
                self._count("routers_differ_unreplayed", known & _sets_differ(own, given))
            if not self.enabled:
                return None
            indices = torch.where(known.unsqueeze(-1), given, own)
            if self.measuring:
                self._count("routers_replayed", known)
            return logits, replayed_weights(router, logits, indices), indices
        return hook

    def _experts_hook(self, j: int):
        def hook(experts, args):
            if self._routing is None or not self.measuring or len(args) < 2:
                return None
            used = args[1]
            given = self._given(j, used.shape[0], used.device)
            known = (given >= 0).all(dim=-1)
            differ = known & _sets_differ(used, given)
            self._count("routers_differ", differ)
            if j == 0:
                self._token_diff = []
            self._token_diff.append(torch.stack([differ, known]))
            if j == len(self.blocks) - 1:  # the forward's last MoE layer: aggregate per token
                per_layer = torch.stack(self._token_diff)  # [layers, 2, tokens]
                known_all = per_layer[:, 1].all(dim=0)
                self._count("tokens", known_all)
                self._count("tokens_differ", known_all & per_layer[:, 0].any(dim=0))
                self._token_diff = []
            return None
        return hook


def _sets_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, whether the expert sets of ``a`` and ``b`` ([tokens, k]) differ (order within a row ignored)."""
    return (a.sort(dim=-1).values != b.to(a.dtype).sort(dim=-1).values).any(dim=-1)


def mismatch_fractions(counts: dict[str, float]) -> dict[str, float]:
    """:meth:`RoutingReplay.take_counts` -> ``router_mismatch`` (experts used differ from the rollout's, per
    (token, MoE layer)), ``router_mismatch_unreplayed`` (the training router's own choice differs) and
    ``token_mismatch`` (tokens with a difference in any layer)."""
    if not counts.get("routers"):
        return {}
    out = {"router_mismatch": counts.get("routers_differ", 0.0) / counts["routers"],
           "router_mismatch_unreplayed": counts.get("routers_differ_unreplayed", 0.0) / counts["routers"],
           "routers_replayed_fraction": counts.get("routers_replayed", 0.0) / counts["routers"]}
    if counts.get("tokens"):
        out["token_mismatch"] = counts.get("tokens_differ", 0.0) / counts["tokens"]
    return out
