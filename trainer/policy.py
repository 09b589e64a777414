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

from . import distributed
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

    def __init__(self, model_dir: str, settings: TrainerSettings | None = None, *, trainable: bool = False) -> None:
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
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).to(self.device)
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
            return shared_prefix_logprobs(self.model, prompts, responses, pad_id=self.pad_id,
                                          temperature=temperature, with_entropy=with_entropy,
                                          routing=(self.replay, routing) if routing is not None else None)
        rows = self._rows(prompts, responses)
        if routing is not None:
            spans = padded_spans([len(p) for p in prompts], [len(r) for r in responses], max(len(p) for p in prompts))
            self.replay.set(replay_tensor(self.replay, routing, spans, tuple(rows.input_ids.shape)))
        logp, entropy = response_logprobs(self.model, rows, temperature=temperature, with_entropy=with_entropy)
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

    def __init__(self, model_dir: str, settings: TrainerSettings | None = None) -> None:
        super().__init__(model_dir, settings, trainable=True)
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
        distributed.init_group(init_method, rank, world_size, backend or distributed.backend_for(self.device),
                               timeout_s)
        self.rank, self.world_size, self.parallel = rank, world_size, parallel
        if parallel == "fsdp" and world_size > 1:
            self._shard()
        return rank

    def _shard(self) -> None:
        """FSDP2: shard each decoder layer and the root over the group, and rebuild the optimizer on the shards."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if self.is_lora:
            raise NotImplementedError("trainer.lora with cluster.trainer_parallel=fsdp: use replicate (the "
                                      "adapters are small; the merged-weight export is not written for shards)")
        # Under FSDP every rank must call the model the same number of times (each call gathers the shards).
        # The shared-prefix forward makes one call or two depending on the rows, so it is off here.
        self.settings = self.settings.model_copy(update={"shared_prefix": False})
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        layers = set(getattr(self.model, "_no_split_modules", None) or [])
        for module in list(self.model.modules()):
            if type(module).__name__ in layers:
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                # Sum, not average: each rank's loss already carries the global denominator. Plain SUM
                # collectives (gloo has no pre-multiplied sum, which a divide factor would otherwise use).
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        self._build_optimizer()

    @property
    def _sharded(self) -> bool:
        return self.parallel == "fsdp" and self.world_size > 1

    def _my_rows(self, rows: list) -> list:
        """This rank's contiguous share of ``rows`` (all of them on a single worker)."""
        return rows if self.world_size == 1 else distributed.rank_share(rows, self.rank, self.world_size)

    def _sync_gradients(self) -> None:
        """Sum the gradients of the group's workers (replicate; FSDP2 reduces them in the backward)."""
        if self.world_size > 1 and not self._sharded:
            distributed.all_reduce_gradients([p for p in self.model.parameters() if p.requires_grad])

    def _idle_backward(self) -> None:
        """A forward/backward that adds zero to every gradient (only the forward under ``torch.no_grad``):
        under FSDP it keeps this rank's collectives in step with a rank that has more micro-batches to run."""
        rows = self._rows([[self.pad_id]], [[self.pad_id]])
        with autocast_context(self.settings.precision, self.device):
            logp, _ = response_logprobs(self.model, rows)
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
        if self.world_size > 1:  # a worker of a group trains its share of the examples
            every = [self._sft_steps(distributed.rank_share(list(range(len(prompts))), r, self.world_size),
                                     prompts, targets, micro_batch_size, pack_tokens)
                     for r in range(self.world_size)]
            mine = distributed.rank_share(list(range(len(prompts))), self.rank, self.world_size)
            prompts, targets = [prompts[i] for i in mine], [targets[i] for i in mine]
        if pack_tokens:
            for row in pack_examples(prompts, targets, pack_tokens):
                with autocast_context(self.settings.precision, self.device):
                    logp = packed_target_logprobs(self.model, row)
                nll = -logp.sum()
                (nll / max(total_tokens, 1)).backward()
                loss_sum += float(nll.detach())
        else:
            for micro in _chunks(list(range(len(prompts))), micro_batch_size):
                rows = self._rows([prompts[i] for i in micro], [targets[i] for i in micro])
                with autocast_context(self.settings.precision, self.device):
                    logp, _ = response_logprobs(self.model, rows)
                nll = -(logp * rows.response_mask).sum()
                (nll / max(total_tokens, 1)).backward()
                loss_sum += float(nll.detach())
        if self.world_size > 1:
            if self._sharded:
                for _ in range(max(every) - every[self.rank]):
                    self._idle_backward()
            self._sync_gradients()
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

    # ---- weights out --------------------------------------------------------------------------------------

    @torch.no_grad()
    def inference_state_dict(self) -> dict[str, "object"]:
        """HF-named full weights (LoRA merged in) as contiguous fp32 numpy arrays, for an inference engine.

        numpy, not torch: Ray's object store hands numpy arrays to a reader without a copy. Tied weights
        appear under both names (vLLM and safetensors each want their own tensor).

        In a group: under FSDP every worker takes part in gathering the shards and rank 0 returns them (the
        others ``{}``); replicated workers hold the same weights, so any one of them may be asked.
        """
        tensors = self.inference_tensors()
        return {name: t.detach().float().cpu().contiguous().numpy().copy() for name, t in tensors.items()}

    @torch.no_grad()
    def inference_tensors(self) -> dict[str, torch.Tensor]:
        """:meth:`inference_state_dict` as torch tensors in the model's own precision and device (what a
        broadcast to the engines sends); ``{}`` on FSDP ranks other than 0."""
        from transformers.core_model_loading import revert_weight_conversion

        model = self.model.get_base_model() if self.is_lora else self.model
        deltas = _lora_deltas(model) if self.is_lora else {}
        state = self._full_model_state(model)
        if state is None:
            return {}
        tensors = {}
        for name, tensor in state.items():
            if "lora_" in name:
                continue
            clean = name.replace(".base_layer.", ".")
            module = clean.rsplit(".", 1)[0]
            if clean.endswith(".weight") and module in deltas:
                tensor = tensor + deltas[module]
            tensors[clean] = tensor
        # Checkpoint names, as save_pretrained writes them: MoE experts are fused 3-D parameters in
        # transformers (``mlp.experts.gate_up_proj``), which vLLM loads only per expert (``experts.0.w1``).
        tensors = dict(revert_weight_conversion(model, tensors))
        if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in tensors:
            embed = model.get_input_embeddings().weight
            if self._sharded:  # the module holds a shard: take the gathered tensor by its name
                name = next(n for n, p in model.named_parameters() if p is embed)
                tensors["lm_head.weight"] = tensors[name]
            else:
                tensors["lm_head.weight"] = embed.detach()
        return tensors

    # ---- weights to the engines by broadcast (GPU: NCCL; rollout/weight_broadcast.py) ------------------------

    def open_weight_group(self, host: str, port: int, world_size: int, backend: str = "nccl",
                          timeout_s: float = 600.0) -> int:
        """Host rank 0 of the weight-sync group at ``host:port`` (the engines' workers join as 1..N); blocks
        until all have joined. Returns the group's size."""
        from rollout.weight_broadcast import WeightGroup

        self._weight_group = WeightGroup(host, port, 0, world_size, backend=backend, timeout_s=timeout_s,
                                         device=str(self.device))
        return world_size

    def weight_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of the weights a broadcast sends, in its order (what the engines allocate)."""
        from rollout.weight_broadcast import tensor_specs

        return tensor_specs(self.inference_tensors())

    def broadcast_weights(self, dtype: str = "bfloat16") -> int:
        """Send the current weights to every engine of the weight group in ``dtype``; returns bytes per engine
        worker. Under FSDP every rank gathers, rank 0 sends."""
        tensors = self.inference_tensors()
        if not tensors:
            return 0
        return self._weight_group.send(tensors, getattr(torch, dtype))

    def _full_model_state(self, model=None) -> dict[str, torch.Tensor] | None:
        """``model``'s (default: the trainer's) state dict with whole tensors: gathered from the shards under
        FSDP (a collective: every rank calls it; rank 0 gets the tensors, on CPU, the others ``None``)."""
        model = self.model if model is None else model
        if not self._sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.rank == 0 else None

    def save_pretrained(self, out_dir: str | Path) -> str:
        """An HF model dir (merged weights + tokenizer + config) that vLLM and transformers load directly.
        In a group only rank 0 writes (under FSDP the others take part in gathering the weights)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        if self.rank != 0:
            if self._sharded:
                self._full_model_state()
            return str(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        base = self.model.get_base_model() if self.is_lora else self.model
        base.config.save_pretrained(out_dir)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(out_dir)
        state = {k: torch.from_numpy(v) for k, v in self.inference_state_dict().items()}
        if getattr(base.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: transformers re-ties it on load
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(out_dir)
        return str(out_dir)

    # ---- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self, out_dir: str | Path, state: dict | None = None) -> str:
        """Model dir + optimizer/scheduler/RNG state + (LoRA) adapter: everything :meth:`load_checkpoint` needs,
        and ``state`` (the loop's step and data position) as ``state.json``, written here by the actor that
        makes the checkpoint, not by the driver into the trainer's folder.

        The state is whole whatever the group's size, so a run saved by N workers resumes on M: replicated
        workers all hold the full optimizer state (rank 0 writes it); FSDP shards are gathered first (every
        rank calls this then). The optimizer state is stored numbered, the plain ``torch.optim`` form.
        """
        out_dir = Path(out_dir)
        self.save_pretrained(out_dir / "model")
        optimizer = self._full_optimizer_state()
        if self.rank != 0:
            return str(out_dir)
        trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad} \
            if self.is_lora else None
        torch.save({"optimizer": optimizer, "scheduler": _scheduler_state(self.scheduler.state_dict()),
                    "optimizer_steps": self.optimizer_steps, "lora_params": trainable,
                    "torch_rng": torch.get_rng_state()}, out_dir / "trainer_state.pt")
        if state is not None:
            import json

            (out_dir / "state.json").write_text(json.dumps(state))
        return str(out_dir)

    def load_checkpoint(self, ckpt_dir: str | Path) -> None:
        """Restore weights, optimizer, scheduler and RNG saved by :meth:`save_checkpoint`."""
        from safetensors.torch import load_file

        ckpt_dir = Path(ckpt_dir)
        state = torch.load(ckpt_dir / "trainer_state.pt", map_location="cpu", weights_only=False)
        if self.is_lora:
            params = dict(self.model.named_parameters())
            for name, value in state["lora_params"].items():
                params[name].data.copy_(value)
        else:
            weights = load_file(str(ckpt_dir / "model" / "model.safetensors"))
            if self.replay is not None:  # checkpoint names (per-expert) -> the model's fused parameters
                from transformers import AutoModelForCausalLM

                weights = AutoModelForCausalLM.from_pretrained(ckpt_dir / "model", dtype=torch.float32).state_dict()
            if self._sharded:
                self._load_sharded(ckpt_dir, weights, state["optimizer"])
            else:
                missing, unexpected = self.model.load_state_dict(weights, strict=False)
                missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embeddings
                if missing or unexpected:
                    raise RuntimeError(f"checkpoint {ckpt_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if not self._sharded:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(_scheduler_state(state["scheduler"]))
        self.optimizer_steps = int(state["optimizer_steps"])
        torch.set_rng_state(state["torch_rng"])

    def _trainable_names(self) -> list[str]:
        """Names of the optimizer's parameters, in the order it numbers them."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def _full_optimizer_state(self) -> dict | None:
        """The optimizer's state dict, whole and numbered (FSDP: gathered, a collective; ``None`` off rank 0)."""
        if not self._sharded:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(self.model, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return distributed.optimizer_state_by_index(state, self._trainable_names()) if self.rank == 0 else None

    def _load_sharded(self, ckpt_dir: Path, weights: dict, optimizer: dict) -> None:
        """FSDP: every rank loads the whole state from the files and keeps its own shards."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, strict=False)
        missing, unexpected = set_model_state_dict(self.model, weights, options=options)
        missing = [m for m in missing if m != "lm_head.weight"]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint {ckpt_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        set_optimizer_state_dict(self.model, self.optimizer,
                                 distributed.optimizer_state_by_name(optimizer, self._trainable_names()),
                                 options=options)


def _scheduler_state(state: dict) -> dict:
    """A LambdaLR state dict without its ``lr_lambdas`` entry. The schedule is a method of the trainer (no
    state of its own), but LambdaLR stores a method's ``__dict__``: in a Ray actor that holds Ray's tracing
    wrappers, and loading them onto the driver's class makes its next ``ray.remote`` fail (a wrapper loop)."""
    return {**state, "lr_lambdas": [None] * len(state.get("lr_lambdas", []))}


def _with_lora(model, lora: LoraSettings | dict):
    from peft import LoraConfig, get_peft_model

    lora = lora if isinstance(lora, LoraSettings) else LoraSettings(**lora)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.targets, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _lora_deltas(model) -> dict[str, torch.Tensor]:
    """Module name -> the weight delta its active LoRA adapters add (B @ A * scale)."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            delta = None
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    d = module.get_delta_weight(adapter)
                    delta = d if delta is None else delta + d
            if delta is not None:
                deltas[name] = delta
    return deltas
