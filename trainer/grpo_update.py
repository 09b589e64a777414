"""The GRPO update of :class:`trainer.policy.PolicyTrainer`: one scored rollout batch -> ``epochs x
mini_batches`` optimizer steps of :func:`trainer.losses.grpo_objective`.

:class:`GRPOUpdate` is a mixin the trainer inherits: it uses the trainer's model, optimizer and schedule,
its forward pass (``_forward``, ``_end_replay``), its group (``world_size``, ``rank``, ``_sharded``,
``_backward_sync``, ``_catch_up``, ``_idle_backward``) and ``_optimizer_step``. The row bookkeeping (which
rows train, in which order and micro-batches) is plain functions.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass

import torch

from rollout.types import RolloutBatch

from . import distributed, losses
from .devices import autocast_context
from .routing_replay import COUNT_NAMES, routing_metrics, update_routing
from .sequences import pad_values
from .settings import GRPOSettings

log = logging.getLogger("r1.trainer")

# The metric sums of a GRPO step that a group all-reduces: a fixed list, so every worker reduces the same
# tensor whatever it trained (grad_norm is not here: it is taken after the gradients are summed).
_GROUP_SUMS = ("pg_loss", "kl", "entropy", "tokens", "clip_fraction", "clip_low_fraction", "clip_high_fraction",
               "ratio_mean", "approx_kl", "mismatch_abs_diff", "mismatch_k3", "mismatch_frac_over_ln2",
               "mismatch_tokens")
_ROUTING_COUNTS = COUNT_NAMES  # trainer.routing_replay's counters, all-reduced in a group


@dataclass
class _GRPOData:
    """One GRPO batch after masking, as the mini-batch loop indexes it. Per-token values are ``[rows, width]``
    (zero-padded to the batch's longest response); micro-batches slice them to their own width."""

    prompts: list[list[int]]
    responses: list[list[int]]
    advantages: torch.Tensor  # [rows]
    rollout_lp: torch.Tensor | None  # None: no row has rollout logprobs
    rollout_valid: torch.Tensor | None  # [rows] bool: the engine returned logprobs for the row
    old_lp: torch.Tensor | None
    ref_lp: torch.Tensor | None
    routing: list | None = None  # per-row rollout routing (R3), replayed or compared

    @property
    def width(self) -> int:
        return max([1] + [len(r) for r in self.responses])


class GRPOUpdate:
    """:meth:`train_grpo` and its steps, for :class:`trainer.policy.PolicyTrainer`."""

    _warned_without_rollout_logprobs = False

    def train_grpo(self, batch: RolloutBatch, settings: GRPOSettings | dict,
                   ref_logprobs: list[list[float]] | None = None) -> dict[str, float]:
        """One GRPO update on a scored rollout batch (advantages filled in). Returns metrics.

        ``settings.epochs x settings.mini_batches`` optimizer steps, always: a batch whose rows are all
        masked out or all skipped still takes them, with zero gradients, so the optimizer's moments and the
        schedule move the same way whatever the batch held. With a single step, the old policy is the
        current one (ratio 1, ``old_logp = logp.detach()``) and no extra forward pass is spent; with more,
        :meth:`_old_logprobs` scores the rows first, the way the first update will.

        Every forward of the update runs with dropout off (see :func:`_dropout_off`).

        Rows whose advantage is 0 (a group where every sample got the same reward) add nothing to the
        gradient when the loss has no KL and no entropy term, so with ``skip_zero_advantage`` they are not
        run at all: the update is the same (their tokens still count in the loss's denominator) and the
        step is cheaper by their share. Per-token metrics (clip fraction, mismatch) are then over the rows
        trained; the entropy metric comes from one micro-batch (a full-vocabulary softmax is not free).

        Rows whose engine returned no logprobs (``rollout_logprobs`` None, or ``rollout_logprobs[i]`` None)
        take weight 1 under TIS and are left out of the mismatch metrics; ``rows_without_rollout_logprobs``
        counts them among the rows kept. When no row has any, TIS is off: said once per trainer if
        ``tis_cap`` is set.
        """
        s = settings if isinstance(settings, GRPOSettings) else GRPOSettings(**settings)
        if s.loss_agg == "seq-mean-token-sum-norm" and not s.horizon:
            raise ValueError("GRPOSettings.horizon must be set for loss_agg='seq-mean-token-sum-norm' (Dr.GRPO "
                             "divides by a constant: the rollout's max_new_tokens)")
        started = time.perf_counter()
        keep = [i for i in range(len(batch)) if not batch.loss_mask or batch.loss_mask[i]]
        data = self._grpo_data(batch, keep, s, ref_logprobs)
        gradient_free = skippable_rows(data.advantages, s, has_reference=data.ref_lp is not None)
        # Every epoch's row order up front: a worker of a group needs old logprobs for each row it will train.
        orders, order = [], list(range(len(keep)))
        rng = random.Random(self.settings.seed + self.optimizer_steps)
        for epoch in range(s.epochs):
            if epoch:
                rng.shuffle(order)
            orders.append(list(order))
        sums: dict[str, list[torch.Tensor]] = {}
        with _dropout_off(self.model):
            if s.epochs * s.mini_batches > 1:
                data.old_lp = self._old_logprobs(data, orders, s, gradient_free)
            for epoch, order in enumerate(orders):
                for mini in _split(order, s.mini_batches):
                    for k, v in self._grpo_minibatch(mini, data, s, first_pass=epoch == 0, skip=gradient_free,
                                                     with_entropy=not sums).items():
                        sums.setdefault(k, []).append(v)
                if epoch == 0 and self.replay is not None:  # the mismatch is a property of the rollout: once
                    routing_counts = self.replay.take_counts()
            out = self._grpo_metrics(sums, s)
            if "entropy" not in out and keep:
                # Every row was skipped: the policy's entropy is still what shows a stuck or collapsing run, so
                # measure it without gradients on one micro-batch.
                out["entropy"] = self._entropy(list(range(min(len(keep), s.micro_batch_size))), data, s)
        if self.replay is not None:
            self.replay.take_counts()
            if self.world_size > 1:
                routing_counts = distributed.reduce_metrics(routing_counts, _ROUTING_COUNTS)
            out.update(routing_metrics(routing_counts, self.replay.coverage))
        with_rollout_lp = int(data.rollout_valid.sum()) if data.rollout_valid is not None else 0
        out.update(rows_trained=float(len(keep) - len(gradient_free)),
                   rows_skipped_zero_advantage=float(len(gradient_free)),
                   rows_masked=float(len(batch) - len(keep)),
                   rows_without_rollout_logprobs=float(len(keep) - with_rollout_lp),
                   train_seconds=time.perf_counter() - started,
                   lr=self.scheduler.get_last_lr()[0], optimizer_steps=float(self.optimizer_steps))
        return out

    def _grpo_data(self, batch: RolloutBatch, keep: list[int], s: GRPOSettings,
                   ref_logprobs: list[list[float]] | None) -> _GRPOData:
        """The kept rows of ``batch`` as tensors padded to their longest response (old logprobs: later)."""
        prompts = [batch.prompt_ids[i] for i in keep]
        responses = [batch.response_ids[i] for i in keep]
        width = max([1] + [len(r) for r in responses])
        # The engine's logprobs come as None for the whole batch (no engine returned any) or per row.
        given = [batch.rollout_logprobs[i] for i in keep] if batch.rollout_logprobs is not None else [None] * len(keep)
        rollout_lp = rollout_valid = None
        if any(lp is not None for lp in given):
            rollout_valid = torch.tensor([lp is not None for lp in given], dtype=torch.bool)
            rollout_lp = pad_values([lp or [] for lp in given], width)
        elif keep and s.tis_cap is not None and not self._warned_without_rollout_logprobs:
            self._warned_without_rollout_logprobs = True
            log.warning("tis_cap=%s but no row of the batch has rollout logprobs: truncated importance sampling "
                        "is off (rows_without_rollout_logprobs counts them; said once)", s.tis_cap)
        ref_lp = pad_values([ref_logprobs[i] for i in keep], width) if ref_logprobs is not None else None
        adv = torch.tensor([batch.advantages[i] for i in keep], dtype=torch.float32)
        return _GRPOData(prompts, responses, adv, rollout_lp, rollout_valid, None, ref_lp,
                         update_routing(self.replay, batch, keep, s, self.model_dir))

    def _grpo_forward(self, micro: list[int], data: _GRPOData, s: GRPOSettings, with_entropy=False):
        """``(logp, entropy, mask)`` of the rows ``micro`` at the update's temperature and precision."""
        with autocast_context(self.settings.precision, self.device):
            return self._forward([data.prompts[i] for i in micro], [data.responses[i] for i in micro],
                                 temperature=s.temperature, with_entropy=with_entropy,
                                 routing=[data.routing[i] for i in micro] if data.routing is not None else None)

    def _micro_batches(self, mini: list[int], data: _GRPOData, s: GRPOSettings, skip: frozenset,
                       rank: int | None = None) -> list[list[int]]:
        """The forward/backward passes of ``mini`` on ``rank`` (default: this worker): its share of the rows
        trained, in :func:`_trained_order`, ``micro_batch_size`` rows at a time."""
        trained = _trained_order(mini, data.prompts, data.responses, skip)
        if self.world_size > 1:  # each worker trains a share; the denominator stays the whole mini-batch's
            trained = distributed.rank_share(trained, self.rank if rank is None else rank, self.world_size)
        return _chunks(trained, s.micro_batch_size)

    def _old_pass(self, orders: list[list[int]], data: _GRPOData, s: GRPOSettings, skip: frozenset,
                  rank: int | None = None) -> list[list[int]]:
        """The micro-batches :meth:`_old_logprobs` runs on ``rank``: those of its first epoch, exactly as the
        update will run them, then (in a group) the rows it trains only in later epochs."""
        first = [m for mini in _split(orders[0], s.mini_batches)
                 for m in self._micro_batches(mini, data, s, skip, rank)]
        seen = {i for m in first for i in m}
        later = dict.fromkeys(i for order in orders[1:] for mini in _split(order, s.mini_batches)
                              for m in self._micro_batches(mini, data, s, skip, rank) for i in m if i not in seen)
        return first + _chunks(list(later), s.micro_batch_size)

    @torch.no_grad()
    def _old_logprobs(self, data: _GRPOData, orders: list[list[int]], s: GRPOSettings, skip: frozenset
                      ) -> torch.Tensor:
        """The old policy's logprobs ``[rows, width]`` of every row this worker trains (0 elsewhere).

        Taken as the first epoch's update will take its own: the same rows per micro-batch (so the same
        padding and shared prompt pass), the same mode (train, dropout off), autocast and temperature, and
        the rollout routing (R3). The first mini-batch then trains at exactly these values: its ratio is 1
        on every token. (Scored otherwise, bf16 rounds differently per batch shape and dropout is on in one
        pass only, and the first mini-batch starts with a clip fraction the policy never earned.)
        """
        old = torch.zeros(len(data.prompts), data.width)
        passes = self._old_pass(orders, data, s, skip)
        for micro in passes:
            try:
                logp, _, mask = self._grpo_forward(micro, data, s)
            finally:
                self._end_replay()
            old[micro, :mask.shape[1]] = logp.float().cpu()
        if self._sharded:  # FSDP: as many forwards as the busiest rank (each one gathers the shards)
            for _ in range(max(len(self._old_pass(orders, data, s, skip, r)) for r in range(self.world_size))
                           - len(passes)):
                self._idle_backward()
        if self.replay is not None:
            self.replay.take_counts()  # the update's own forward is what the mismatch metrics measure
        return old

    @torch.no_grad()
    def _entropy(self, rows: list[int], data: _GRPOData, s: GRPOSettings) -> float:
        """Entropy of the tempered policy over ``rows``, aggregated as the update's is (no gradient)."""
        try:
            _, entropy, mask = self._grpo_forward(rows, data, s, with_entropy=True)
        finally:
            self._end_replay()
        return float(losses.aggregate(entropy, mask, s.loss_agg, horizon=s.horizon))

    def _grpo_minibatch(self, mini: list[int], data: _GRPOData, s: GRPOSettings, *, first_pass: bool,
                        skip: frozenset = frozenset(), with_entropy: bool = True) -> dict[str, torch.Tensor]:
        """forward -> :func:`trainer.losses.grpo_objective` -> backward per micro-batch, then one optimizer
        step. Returns the mini-batch's metric sums as tensors (no host sync here)."""
        self.optimizer.zero_grad(set_to_none=True)
        # The denominator counts every row of the mini-batch, skipped or not, so skipping changes nothing.
        denominator = losses.aggregate_count(_length_mask([len(data.responses[i]) for i in mini]), s.loss_agg)
        micros = self._micro_batches(mini, data, s, skip)
        sums: dict[str, torch.Tensor] = {}
        for n, micro in enumerate(micros):
            with self._backward_sync(last=n == len(micros) - 1):  # DDP: one gradient sum per step
                terms = self._grpo_micro(micro, data, s, denominator, entropy_mode=(
                    "grad" if s.entropy_coef else (with_entropy and n == 0)))
            if not first_pass:  # the mismatch is a property of the rollout: measure it once
                for k in ("mismatch_abs_diff", "mismatch_k3", "mismatch_frac_over_ln2", "mismatch_tokens"):
                    terms.pop(k, None)
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v
        if self.world_size > 1:  # idle passes that keep this rank's collectives in step with the others'
            self._catch_up([len(self._micro_batches(mini, data, s, skip, r)) for r in range(self.world_size)])
        # Parameters no backward reached (every row skipped, an expert no token was routed to) get a zero
        # gradient in _optimizer_step: the optimizer still moves them (momentum, weight decay).
        sums["grad_norm"] = self._optimizer_step()
        return sums

    def _grpo_micro(self, micro: list[int], data: _GRPOData, s: GRPOSettings, denominator, entropy_mode
                    ) -> dict[str, torch.Tensor]:
        """forward -> :func:`trainer.losses.grpo_objective` -> backward of the rows ``micro``; its metric terms.
        ``entropy_mode``: entropy is a full-vocabulary softmax: with a bonus ("grad") part of the loss on every
        micro-batch; as a metric, the step's first micro-batch is enough."""
        idx = torch.tensor(micro)
        logp, entropy, mask = self._grpo_forward(micro, data, s, with_entropy=entropy_mode)
        w = mask.shape[1]
        take = lambda t: t[idx, :w].to(self.device) if t is not None else None  # noqa: E731
        old = take(data.old_lp) if data.old_lp is not None else logp.detach()
        loss, terms = losses.grpo_objective(
            logp, old, data.advantages[idx].to(self.device), mask, clip_low=s.clip_low, clip_high=s.clip_high,
            agg=s.loss_agg, level=s.ratio_level, horizon=s.horizon, denominator=denominator,
            rollout_logp=take(data.rollout_lp),
            rollout_valid=data.rollout_valid[idx] if data.rollout_valid is not None else None,
            tis_cap=s.tis_cap, ref_logp=take(data.ref_lp), kl_coef=s.kl_coef, kl_kind=s.kl_kind,
            entropy=entropy if s.entropy_coef else None, entropy_coef=s.entropy_coef)
        if self.replay is not None:
            self.replay.measuring = False  # a checkpointed backward re-runs the routers: count them once
        loss.backward()
        self._end_replay()
        if not s.entropy_coef and entropy is not None:
            # Logged, not trained: the micro-batch's own aggregate, not its share of the mini-batch.
            terms["entropy"] = losses.aggregate(entropy, mask, s.loss_agg, horizon=s.horizon).detach()
        return terms

    def _grpo_metrics(self, sums: dict[str, list[torch.Tensor]], s: GRPOSettings) -> dict[str, float]:
        """The step's metrics from the mini-batches' sums: one device-to-host transfer (and, in a group, one
        all-reduce)."""
        names = sorted(sums)
        flat = torch.stack([torch.stack(sums[k]).sum().float() for k in names]).tolist() if names else []
        totals = dict(zip(names, flat))
        if self.world_size > 1:
            # The global figures: every rank trained a share of the rows. Entropy as a metric is one
            # micro-batch's own aggregate per rank: averaged; as a loss term it is a share: summed.
            totals = distributed.reduce_metrics(totals, _GROUP_SUMS, () if s.entropy_coef else ("entropy",))
        out = {}
        n_minis = s.epochs * s.mini_batches
        for k in ("pg_loss", "kl"):
            if k in totals:
                out[k] = totals[k] / n_minis
        out.update({k: totals[k] / max(totals.get("tokens", 0.0), 1.0) for k in
                    ("clip_fraction", "clip_low_fraction", "clip_high_fraction", "ratio_mean", "approx_kl")
                    if k in totals})
        out.update({k: totals[k] / max(totals["mismatch_tokens"], 1.0) for k in
                    ("mismatch_abs_diff", "mismatch_k3", "mismatch_frac_over_ln2") if "mismatch_tokens" in totals})
        out["grad_norm"] = totals.get("grad_norm", 0.0) / n_minis
        if "entropy" in totals:
            out["entropy"] = totals["entropy"] / (n_minis if s.entropy_coef else 1)
        return out


@contextlib.contextmanager
def _dropout_off(model: torch.nn.Module):
    """Train mode with every dropout module off, for all the forwards of a GRPO update.

    The importance ratio compares two forwards of the same weights: the old-logprob pass and the update's
    first forward. Dropout would make each a different random function, so the ratio would measure dropout
    noise, not policy change (and clip on it). The usual RL trainers (verl, OpenRLHF) turn dropout off for the
    policy; so does this, for the update only (SFT keeps it). Train mode otherwise: gradient checkpointing
    runs only in train mode. Functional dropout that a model reads from its config in train mode
    (``attention_dropout``) is not a module and stays as configured: 0 in the models this recipe trains.
    """
    model.train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    for m in dropouts:
        m.eval()
    try:
        yield
    finally:
        for m in dropouts:
            m.train()


def skippable_rows(advantages: torch.Tensor, settings: GRPOSettings, *, has_reference: bool) -> frozenset[int]:
    """Indices of rows whose forward/backward can be skipped without changing the update: advantage exactly
    0 and no loss term that does not scale with the advantage (a KL to a reference, an entropy bonus)."""
    if not settings.skip_zero_advantage or settings.entropy_coef or (settings.kl_coef and has_reference):
        return frozenset()
    return frozenset(int(i) for i in torch.nonzero(advantages == 0).flatten())


def _trained_order(mini: list[int], prompts: list, responses: list, skip: frozenset) -> list[int]:
    """The rows of ``mini`` that run forward/backward: a group's rows next to each other (they share a
    prompt pass), shortest first within it, so a micro-batch is padded only to its own longest response."""
    return sorted((i for i in mini if i not in skip), key=lambda i: (tuple(prompts[i]), len(responses[i])))


def _length_mask(lengths: list[int]) -> torch.Tensor:
    """``[len(lengths), max length]`` float mask with ``lengths[i]`` leading ones per row."""
    width = max([1] + lengths)
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths or [0]).unsqueeze(1)).float()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _split(items: list, parts: int) -> list[list]:
    """``items`` in exactly ``parts`` near-equal consecutive slices (empty ones when there are fewer items:
    the optimizer steps as often as configured whatever the batch held)."""
    parts = max(1, parts)
    base, extra = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        out.append(items[start:end])
        start = end
    return out
