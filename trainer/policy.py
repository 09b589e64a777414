"""The policy a trainer optimises, and the frozen reference: model loading, logprobs, GRPO/SFT updates.

Plain classes (no Ray): ``pipeline/`` wraps them as actors, tests use them directly. The GRPO update is
:mod:`trainer.grpo_update` (a mixin of :class:`PolicyTrainer`).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import torch

from rollout.types import RolloutBatch

from . import data_parallel, distributed
from .devices import autocast_context, default_device
# _chunks, _trained_order, skippable_rows: also importable from here, where they lived before.
from .grpo_update import GRPOUpdate, _chunks, _trained_order, skippable_rows  # noqa: F401
from .routing_layout import padded_spans
from .routing_replay import RoutingReplay
from .sequences import (PaddedRows, pack_examples, packed_target_logprobs, pad_rows, replay_tensor,
                        response_logprobs, shared_prefix_logprobs, unpad)
from .settings import LoraSettings, TrainerSettings

log = logging.getLogger("r1.trainer")


class Policy:
    """A causal LM that scores responses: per-token logprobs, no optimizer (the frozen reference)."""

    _ddp = None  # a replicated trainer group's DistributedDataParallel wrapper of the model

    def __init__(self, model_dir: str, settings: TrainerSettings | None = None, *, trainable: bool = False,
                 empty: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings or TrainerSettings()
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        torch.manual_seed(self.settings.seed)
        self.device = default_device()
        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        # Master weights stay fp32; bf16 happens inside autocast (optimizer states in bf16 lose updates).
        # ``empty``: parameters on the meta device, filled from rank 0 when an FSDP group forms.
        model = data_parallel.empty_model(self.model_dir) if empty else \
            AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to(self.device)
        replay = RoutingReplay(model)
        self.replay = replay if replay.is_moe else None  # R3 hooks; dense models carry none
        if trainable and self.settings.lora is not None:
            model = _with_lora(model, self.settings.lora)
        if trainable and self.settings.gradient_checkpointing:  # never with shared_prefix: TrainerKnobs refuses it
            model.gradient_checkpointing_enable()
        self.model = model
        self.model.train(trainable)
        if not trainable:
            self.model.requires_grad_(False)

    @property
    def _net(self) -> torch.nn.Module:
        """What a forward calls: the DDP wrapper when gradients are on (its backward sums them over the group),
        else the model (scoring runs no collective, so one replicated worker may score alone)."""
        return self._ddp if self._ddp is not None and torch.is_grad_enabled() else self.model

    @property
    def is_lora(self) -> bool:
        return self.settings.lora is not None and hasattr(self.model, "disable_adapter")

    def _rows(self, prompts, responses) -> PaddedRows:
        rows = pad_rows(prompts, responses, pad_id=self.pad_id)
        return PaddedRows(*(t.to(self.device) for t in (rows.input_ids, rows.attention_mask, rows.position_ids,
                                                         rows.response_ids, rows.response_mask)))

    def _forward(self, prompts, responses, *, temperature=1.0, with_entropy=False, routing=None):
        """``(logp, entropy, mask)`` ``[rows, longest response]``; rows sharing a prompt share its forward pass.

        ``routing``: per-row rollout routing (R3) for an MoE model, replayed (or only compared, when
        ``self.replay.enabled`` is False). It stays set after a plain forward, so the backward's re-run under
        gradient checkpointing routes the same way; the caller clears it when the backward is done.
        """
        if routing is not None and self.replay is None:
            raise ValueError(f"routing replay: {self.model_dir} has no MoE layers (set rl.routing_replay=false)")
        if self.settings.shared_prefix and len({tuple(p) for p in prompts}) < len(prompts):
            return shared_prefix_logprobs(self._net, prompts, responses, pad_id=self.pad_id,
                                          temperature=temperature, with_entropy=with_entropy,
                                          routing=(self.replay, routing) if routing is not None else None)
        rows = self._rows(prompts, responses)
        if routing is not None:
            spans = padded_spans([len(p) for p in prompts], [len(r) for r in responses], max(len(p) for p in prompts))
            self.replay.set(replay_tensor(self.replay, routing, spans, tuple(rows.input_ids.shape)))
        logp, entropy = response_logprobs(self._net, rows, temperature=temperature, with_entropy=with_entropy)
        return logp, entropy, rows.response_mask

    def _end_replay(self) -> None:
        if self.replay is not None:
            self.replay.clear()

    @torch.no_grad()
    def logprobs(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                 temperature: float = 1.0, micro_batch_size: int = 8, disable_adapter: bool = False,
                 routing: Sequence | None = None, replay: bool = True) -> list[list[float]]:
        """Per-token logprobs of ``responses`` given ``prompts`` (one list per row, unpadded).

        ``disable_adapter`` scores with the LoRA base (the reference model of a LoRA run, for free).
        ``routing``: per-row rollout routing (R3, MoE models), replayed, or with ``replay=False`` only compared
        with the model's own routing (the mismatch counts of ``self.replay``).
        """
        if routing is not None and self.replay is not None:
            self.replay.enabled = replay
        was_training = self.model.training
        self.model.eval()
        adapter_off = self.model.disable_adapter() if disable_adapter and self.is_lora else contextlib.nullcontext()
        out: list[list[float]] = []
        try:
            with adapter_off, autocast_context(self.settings.precision, self.device):
                for start in range(0, len(prompts), micro_batch_size):
                    logp, _, _ = self._forward(
                        prompts[start:start + micro_batch_size], responses[start:start + micro_batch_size],
                        temperature=temperature,
                        routing=routing[start:start + micro_batch_size] if routing is not None else None)
                    out += unpad(logp, [len(r) for r in responses[start:start + micro_batch_size]])
        finally:
            self.model.train(was_training)
            self._end_replay()
        return out

    def batch_logprobs(self, batch: RolloutBatch, temperature: float = 1.0, micro_batch_size: int = 8,
                       disable_adapter: bool = False, replay_routing: bool = False) -> list[list[float]]:
        """:meth:`logprobs` of a whole rollout batch (what a reference actor is asked for); ``replay_routing``
        replays the batch's rollout routing (``rl.routing_replay_reference``)."""
        routing = batch.routed_experts if replay_routing and self.replay is not None else None
        return self.logprobs(batch.prompt_ids, batch.response_ids, temperature=temperature,
                             micro_batch_size=micro_batch_size, disable_adapter=disable_adapter, routing=routing)


class PolicyTrainer(GRPOUpdate, Policy):
    """The policy being optimised: AdamW, GRPO updates on rollout batches, SFT updates, weight export.

    Alone by default; :meth:`join_group` makes it rank ``rank`` of ``world_size`` workers that split each
    batch's rows and sum their gradients (``replicate``) or also shard the model (``fsdp``, FSDP2).
    """

    rank = 0
    world_size = 1
    parallel = "replicate"

    def __init__(self, model_dir: str, settings: TrainerSettings | None = None, *,
                 weights_from_rank0: bool = False) -> None:
        # weights_from_rank0: a rank > 0 of an FSDP group reads no weights; join_group brings rank 0's.
        super().__init__(model_dir, settings, trainable=True, empty=weights_from_rank0)
        self._build_optimizer()
        self.optimizer_steps = 0

    def _build_optimizer(self) -> None:
        o = self.settings.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    # ---- the trainer group --------------------------------------------------------------------------------

    def node_address(self) -> tuple[str, int]:
        """``(ip, free port)`` of this worker's node: rank 0 hosts the group's rendezvous there."""
        return distributed.node_address()

    def join_group(self, init_method: str, rank: int, world_size: int, parallel: str = "replicate",
                   timeout_s: float = 3600.0, backend: str | None = None) -> int:
        """Become rank ``rank`` of ``world_size`` trainer workers (all of them call this at once, before
        any training). ``parallel``: ``replicate`` (whole model on each, gradients all-reduced) or ``fsdp``
        (FSDP2 shards of every decoder layer and the rest). ``backend``: default from the device."""
        if parallel not in ("replicate", "fsdp"):
            raise ValueError(f"parallel={parallel!r}: expected 'replicate' or 'fsdp'")
        if self.optimizer_steps:
            raise RuntimeError("join_group after training: the workers would start from different states")
        if next(self.model.parameters()).is_meta and (parallel != "fsdp" or world_size < 2):
            raise ValueError(f"weights_from_rank0 with parallel={parallel}, {world_size} workers: only an FSDP "
                             "group of 2+ fills a rank's weights from rank 0")
        distributed.init_group(init_method, rank, world_size, backend or distributed.backend_for(self.device),
                               timeout_s)
        self.rank, self.world_size, self.parallel = rank, world_size, parallel
        if self._sharded:
            self._shard()
        elif world_size > 1:  # DDP: its backward sums the gradients; it starts every replica from rank 0's
            self._ddp = data_parallel.replicate(self.model, self.device)
        return rank

    def _shard(self) -> None:
        """FSDP2 (:func:`trainer.data_parallel.shard`: rank 0's weights, mixed precision), and the optimizer
        rebuilt on the shards."""
        if self.is_lora:
            raise NotImplementedError("trainer.lora with cluster.trainer_parallel=fsdp: use replicate (the "
                                      "adapters are small; the merged-weight export is not written for shards)")
        # Under FSDP every rank must call the model the same number of times (each call gathers the shards).
        # The shared-prefix forward makes one call or two depending on the rows, so it is off here.
        self.settings = self.settings.model_copy(update={"shared_prefix": False})
        data_parallel.shard(self.model, self.device, self.settings.precision, self.rank, self.world_size)
        self._build_optimizer()

    @property
    def _sharded(self) -> bool:
        # ``parallel`` is fsdp only after join_group: FSDP2 over one worker is a real layout too (mixed
        # precision on one GPU; the reference the group's update is compared with).
        return self.parallel == "fsdp"

    def _my_rows(self, rows: list) -> list:
        """This rank's contiguous share of ``rows`` (all of them on a single worker)."""
        return rows if self.world_size == 1 else distributed.rank_share(rows, self.rank, self.world_size)

    def _backward_sync(self, last: bool):
        """Around a micro-batch's forward and backward: under DDP its gradient stays local (``no_sync``) unless
        it is the step's ``last``, whose reduction then sums everything accumulated."""
        return self._ddp.no_sync() if self._ddp is not None and not last else contextlib.nullcontext()

    def _catch_up(self, every: list[int]) -> None:
        """After this rank's ``every[rank]`` forward/backward passes of a step (``every``: each rank's count),
        the idle ones that keep the group in step: FSDP, up to the busiest rank's (each pass gathers the
        shards); DDP, one if this rank ran none (the gradient sum waits for a backward on every rank)."""
        if len(every) > 1 and max(every):
            for _ in range(max(every) - every[self.rank] if self._sharded else int(every[self.rank] == 0)):
                self._idle_backward()

    def _idle_backward(self) -> None:
        """A forward/backward that adds zero to every gradient (only the forward under ``torch.no_grad``):
        it keeps this rank's collectives in step with a rank that has more micro-batches to run."""
        rows = self._rows([[self.pad_id]], [[self.pad_id]])
        with autocast_context(self.settings.precision, self.device):
            logp, _ = response_logprobs(self._net, rows)
        if logp.requires_grad:
            (logp.sum() * 0.0).backward()

    def _lr_factor(self, step: int) -> float:
        o = self.settings.optim
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.total_steps:
            progress = min(1.0, (step - o.warmup_steps) / max(1, o.total_steps - o.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def _optimizer_step(self) -> torch.Tensor:
        """Clip, step (unless the gradient is not finite), advance the schedule. Returns the gradient norm.

        Every parameter the optimizer trains takes the step: one that no backward reached (every row of a
        GRPO mini-batch skipped or masked, an MoE expert no token was routed to) has ``grad`` None, which
        AdamW and SGD skip (no weight decay, no moment decay); it gets the zero gradient it has in fact."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]  # all it trains
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        clip = self.settings.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip and clip > 0 else float("inf")).detach()
        if hasattr(norm, "full_tensor"):  # FSDP2: the norm of sharded gradients is a DTensor
            norm = norm.full_tensor()
        if torch.isfinite(norm):
            self.optimizer.step()
        else:  # a non-finite gradient would poison the weights and Adam's moments for good: skip the step
            log.warning("non-finite gradient norm %s: optimizer step skipped", float(norm))
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return norm

    # ---- SFT ----------------------------------------------------------------------------------------------

    def train_sft(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                  micro_batch_size: int = 8, pack_tokens: int | None = None) -> dict[str, float]:
        """One optimizer step of next-token cross-entropy on ``targets`` given ``prompts`` (token-mean).

        The loss covers target tokens only (the assistant's turn); prompt tokens condition, never train.
        ``pack_tokens``: lay examples end to end in rows of at most that many tokens (each attends only to
        itself) instead of padding them; the loss is the same, the padding compute is gone.
        """
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = sum(len(t) for t in targets)  # the whole batch's, on every worker of a group
        loss_sum = 0.0
        every = [self._sft_steps(distributed.rank_share(list(range(len(prompts))), r, self.world_size),
                                 prompts, targets, micro_batch_size, pack_tokens) for r in range(self.world_size)]
        mine = self._my_rows(list(range(len(prompts))))  # a worker of a group trains its share of the examples
        prompts, targets = [prompts[i] for i in mine], [targets[i] for i in mine]
        steps = pack_examples(prompts, targets, pack_tokens) if pack_tokens \
            else _chunks(list(range(len(prompts))), micro_batch_size)
        for n, step in enumerate(steps):
            with self._backward_sync(last=n == len(steps) - 1):
                with autocast_context(self.settings.precision, self.device):
                    if pack_tokens:
                        nll = -packed_target_logprobs(self._net, step).sum()
                    else:
                        rows = self._rows([prompts[i] for i in step], [targets[i] for i in step])
                        nll = -(response_logprobs(self._net, rows)[0] * rows.response_mask).sum()
                (nll / max(total_tokens, 1)).backward()
            loss_sum += float(nll.detach())
        self._catch_up(every)
        if self.world_size > 1:
            loss_sum = float(distributed.all_reduce_sums(torch.tensor([loss_sum], dtype=torch.float64))[0])
        grad_norm = float(self._optimizer_step())
        return {"loss": loss_sum / max(total_tokens, 1), "grad_norm": grad_norm, "tokens": float(total_tokens),
                "lr": self.scheduler.get_last_lr()[0], "train_seconds": time.perf_counter() - started}

    @staticmethod
    def _sft_steps(rows: list[int], prompts, targets, micro_batch_size: int, pack_tokens: int | None) -> int:
        """Forward/backward passes :meth:`train_sft` makes for ``rows`` of the batch."""
        if pack_tokens:
            return len(pack_examples([prompts[i] for i in rows], [targets[i] for i in rows], pack_tokens))
        return len(_chunks(rows, micro_batch_size))

    # ---- weights out (trainer/weight_export.py: one parameter at a time; the routes in weight_sync_send.py) ---

    @torch.no_grad()
    def inference_state_dict(self) -> dict[str, "object"]:
        """HF-named full weights (LoRA merged in) as contiguous fp32 numpy arrays, for an inference engine
        (the object-store route). numpy: Ray's object store hands numpy arrays to a reader without a copy.
        Tied weights appear under both names. Under FSDP every worker takes part in the gathers and rank 0
        returns the weights (the others ``{}``); replicated workers hold the same weights."""
        from .weight_export import rank0_weights

        return rank0_weights(self, lambda t: t.float().cpu().contiguous().numpy().copy())

    @torch.no_grad()
    def inference_tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`inference_state_dict` as torch tensors in the model's precision, on its device; ``{}`` on
        FSDP ranks other than 0. (A sync sends :func:`trainer.weight_export.iter_inference_tensors` instead.)"""
        from .weight_export import inference_tensors

        return inference_tensors(self)

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str = "nccl",
                          timeout_s: float = 600.0) -> int:
        """Host rank 0 of the weight-sync group (``cluster.weight_sync: broadcast``); blocks until the engines'
        workers have joined as 1..N. Returns the group's size."""
        from .weight_sync_send import open_weight_group

        return open_weight_group(self, host, port, world_size, backend, timeout_s)

    def weight_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the weights a sync sends, in its order (what the engines expect)."""
        from .weight_export import weight_specs

        return weight_specs(self)

    def broadcast_weights(self, dtype: str = "bfloat16", specs: list | None = None) -> int:
        """Send the current weights to the weight group in ``dtype``, one gathered parameter at a time; returns
        the bytes per engine worker (0 on FSDP ranks > 0, which take part in the gathers)."""
        from .weight_sync_send import broadcast_weights

        return broadcast_weights(self, dtype, specs)

    def open_ipc_export(self, dtype: str = "bfloat16", specs: list | None = None, bucket_mb: float = 512.0) -> int:
        """Start a CUDA-IPC sync (``cluster.weight_sync: ipc``, colocated); returns its number of buckets."""
        from .weight_sync_send import open_ipc_export

        return open_ipc_export(self, dtype, specs, bucket_mb)

    def next_ipc_bucket(self):
        """The next bucket's IPC handles (every rank's GPU) and specs; None when the sync is done."""
        from .weight_sync_send import next_ipc_bucket

        return next_ipc_bucket(self)

    def offload_states(self) -> bool:
        """Colocated on GPUs: weights, gradients and optimizer state to host RAM and the CUDA cache emptied,
        before the engines wake; False where there is nothing to free (CPU). See trainer/offload.py."""
        from .offload import offload_states

        return offload_states(self)

    def reload_states(self) -> bool:
        """Undo :meth:`offload_states` (before the trainer computes again); False where nothing moved."""
        from .offload import reload_states

        return reload_states(self)

    def save_pretrained(self, out_dir: str | Path) -> str:
        """An HF model dir (merged weights + tokenizer + config) that vLLM and transformers load directly.
        In a group only rank 0 writes (under FSDP the others take part in gathering the weights)."""
        from .weight_export import save_pretrained

        return save_pretrained(self, out_dir)

    # ---- checkpoints (trainer/checkpoint_io.py: torch.distributed.checkpoint, sharded) --------------------

    def save_checkpoint(self, out_dir: str | Path, state: dict | None = None) -> str:
        """Weights, optimizer, scheduler, step count and RNG (DCP: every rank of a group writes its shards; all
        call this), and ``state`` (the loop's step and data position) as ``state.json``, written by the actor
        that makes the checkpoint. Loadable at any group size and layout; see :mod:`trainer.checkpoint_io`."""
        from .checkpoint_io import save_checkpoint

        return save_checkpoint(self, out_dir, state)

    def load_checkpoint(self, ckpt_dir: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` saved (or a checkpoint of the earlier format); in a group every
        rank calls this."""
        from .checkpoint_io import load_checkpoint

        load_checkpoint(self, ckpt_dir)


def _with_lora(model, lora: LoraSettings | dict):
    from peft import LoraConfig, get_peft_model

    lora = lora if isinstance(lora, LoraSettings) else LoraSettings(**lora)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
