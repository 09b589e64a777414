"""Prompt+response rows -> padded tensors, and per-token logprobs of the responses under a model.

Layout: prompts are left-padded to a common width P and responses right-padded to a common width R, so
every response starts at column P. The logits that predict response token t sit at column P - 1 + t for
every row, and a single ``logits_to_keep=R + 1`` asks the model for just those columns: the
``[batch, seq, vocab]`` logits of the prompt are never materialised (the vocabulary is 49k wide).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from .routing_layout import prompt_pass_spans, response_pass_spans, routing_tensor


@dataclass
class PaddedRows:
    input_ids: torch.Tensor  # [B, P + R]
    attention_mask: torch.Tensor  # [B, P + R]
    position_ids: torch.Tensor  # [B, P + R]: positions restart at each row's first real token
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] float, 1 on real response tokens

    @property
    def response_width(self) -> int:
        return self.response_ids.shape[1]


def pad_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *, pad_id: int,
             response_width: int | None = None) -> PaddedRows:
    """Left-pad prompts, right-pad responses (to ``response_width`` if given, else the longest).

    Shapes: returns PaddedRows with input_ids, attention_mask, position_ids [batch, prompt_len + response_len]
    (long) and response_ids (long), response_mask (float32) [batch, response_len].
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"pad_rows: {len(prompts)} prompts and {len(responses)} responses")
    p_width = max(len(p) for p in prompts)
    r_width = max(max(len(r) for r in responses), 1)
    if response_width is not None:
        if response_width < r_width:
            raise ValueError(f"response_width={response_width} is shorter than a response of {r_width} tokens")
        r_width = response_width
    b = len(prompts)
    input_ids = torch.full((b, p_width + r_width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, p_width + r_width), dtype=torch.long)
    response_ids = torch.full((b, r_width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((b, r_width), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError(f"pad_rows: prompt {i} is empty (a response needs a token to condition on)")
        input_ids[i, p_width - len(p):p_width] = torch.tensor(p, dtype=torch.long)
        attention[i, p_width - len(p):p_width + len(r)] = 1
        if r:
            input_ids[i, p_width:p_width + len(r)] = torch.tensor(r, dtype=torch.long)
            response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            response_mask[i, :len(r)] = 1.0
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return PaddedRows(input_ids, attention, position_ids, response_ids, response_mask)


def response_logprobs(model, rows: PaddedRows, *, temperature: float = 1.0, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprob of each response token (and the policy's entropy there, if asked).

    Shapes: rows as :func:`pad_rows` -> returns (logp [batch, response_len] fp32, 0 on padding;
    entropy [batch, response_len] or None).

    Logits are divided by ``temperature`` first: the engine sampled from the tempered distribution, and
    importance ratios must compare like with like. Gradients flow unless the caller disables them.
    """
    r = rows.response_width
    out = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, position_ids=rows.position_ids,
                logits_to_keep=r + 1, use_cache=False)
    # Column P-1+t predicts response token t.
    logp, entropy = token_logprobs(out.logits[:, :-1, :], rows.response_ids, temperature, with_entropy)
    return logp * rows.response_mask, entropy


# Positions x rows x vocabulary entries per chunk of :func:`token_logprobs`: 2**25 fp32 values = 128 MiB
# (8 rows x 150k vocabulary: 27 positions a chunk).
LOGIT_CHUNK_ELEMENTS = 2 ** 25


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, with_entropy,
                   chunk_elements: int = LOGIT_CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprob of ``token_ids`` under ``logits / temperature``, in fp32, and the entropy if asked.

    Shapes: logits [batch, response_len, vocab], token_ids [batch, response_len] -> returns
    (logp [batch, response_len] fp32, entropy [batch, response_len] or None).

    ``with_entropy``: False (none), ``"grad"`` (part of the loss: keeps its graph), anything else true (a
    metric, without a graph).

    Memory: the logits (bf16 under autocast) are the big tensor of a step, ``[batch, len, vocab]``. They
    are read in chunks of positions of at most ``chunk_elements`` values, each made fp32, tempered, reduced
    (logsumexp + gather, no full log_softmax) and dropped, so no fp32 copy of the whole logits is ever made.
    With gradients, each chunk runs under a checkpoint: the backward keeps only the chunk's input (a view of
    the logits) and recomputes its fp32 values, instead of keeping fp32 copies of the whole logits.
    """
    step = max(1, chunk_elements // max(1, logits.shape[0] * logits.shape[-1]))
    keep_graph = torch.is_grad_enabled() and logits.requires_grad
    logps, entropies = [], []
    for piece, ids in zip(logits.split(step, dim=1), token_ids.split(step, dim=1)):
        if keep_graph:
            logp, entropy = checkpoint(_chunk_logprobs, piece, ids, temperature, with_entropy, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(piece, ids, temperature, with_entropy)
        logps.append(logp)
        entropies.append(entropy)
    logp = logps[0] if len(logps) == 1 else torch.cat(logps, dim=1)
    if not with_entropy:
        return logp, None
    return logp, entropies[0] if len(entropies) == 1 else torch.cat(entropies, dim=1)


def _chunk_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, with_entropy
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`token_logprobs` of one chunk of positions, from one fp32 copy of it."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_norm
    if not with_entropy:
        return logp, None
    if with_entropy == "grad":
        return logp, log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    with torch.no_grad():  # a metric: no graph (it would keep two more fp32 tensors of the chunk)
        return logp, log_norm.detach() - (torch.softmax(logits.detach(), dim=-1) * logits.detach()).sum(-1)


def unpad(values: torch.Tensor, lengths: Sequence[int]) -> list[list[float]]:
    """Padded values -> one list per row of its first ``lengths[i]`` values.

    Shapes: values [batch, response_len], lengths [batch] (ints) -> returns ``batch`` lists of floats.
    """
    rows = values.detach().float().cpu().tolist()
    return [row[:n] for row, n in zip(rows, lengths)]


def pad_values(values: Sequence[Sequence[float]], width: int) -> torch.Tensor:
    """Ragged per-token values -> float32 tensor, zero-padded.

    Shapes: values ``batch`` lists -> returns [batch, width] float32.
    """
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, v in enumerate(values):
        if v:
            out[i, :len(v)] = torch.tensor(list(v), dtype=torch.float32)
    return out


def shared_prefix_logprobs(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                           pad_id: int, response_width: int | None = None, temperature: float = 1.0,
                           with_entropy: bool = False, routing=None
                           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """:func:`response_logprobs` for rows that share prompts (a GRPO group): each distinct prompt runs once.

    Shapes: returns (logp [batch, response_len] fp32, 0 on padding; entropy [batch, response_len] or None;
    response_mask [batch, response_len] float32), response_len = ``response_width`` or the longest response.

    The prompt's forward pass yields its KV cache and the logits of the first response token; the cache is
    fanned out to the rows that share the prompt (an index select, so gradients of every row flow back
    into the one shared prompt computation) and the responses run on top of it. With 8 samples per prompt
    and prompts as long as responses this skips ~45% of the training FLOPs.
    """
    keys: dict[tuple, int] = {}
    row_prompt = [keys.setdefault(tuple(p), len(keys)) for p in prompts]
    unique = [list(k) for k in keys]
    device = next(model.parameters()).device
    head = pad_rows(unique, [[]] * len(unique), pad_id=pad_id, response_width=1)  # prompts only, left-padded
    p_width = head.input_ids.shape[1] - 1
    p_ids, p_mask, p_pos = (t[:, :p_width].to(device) for t in (head.input_ids, head.attention_mask, head.position_ids))
    tail = pad_rows([[pad_id]] * len(responses), responses, pad_id=pad_id, response_width=response_width)
    r_ids, r_mask = tail.response_ids.to(device), tail.response_mask.to(device)
    r = r_ids.shape[1]
    index = torch.tensor(row_prompt, device=device)
    if routing is not None:
        routing[0].set(_pass_routing(routing, prompt_pass_spans(
            [row_prompt.index(u) for u in range(len(unique))], [len(p) for p in unique], p_width), (len(unique), p_width)))
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1:, :].index_select(0, index)  # predicts response token 0, per row
    # Each pass's logits are scored on their own (never concatenated: a copy of all of them).
    logp, entropy = token_logprobs(first, r_ids[:, :1], temperature, with_entropy)
    if r > 1:
        cache = out.past_key_values
        cache.batch_select_indices(index)
        prompt_len = p_mask.sum(-1).index_select(0, index)
        attention = torch.cat([p_mask.index_select(0, index), r_mask[:, :-1].long()], dim=1)
        positions = prompt_len.unsqueeze(1) + torch.arange(r - 1, device=device).unsqueeze(0)
        if routing is not None:
            routing[0].set(_pass_routing(routing, response_pass_spans(
                [len(p) for p in prompts], [len(x) for x in responses]), (len(responses), r - 1)))
        rest = model(input_ids=r_ids[:, :-1], attention_mask=attention, position_ids=positions,
                     past_key_values=cache, use_cache=True)
        rest_logp, rest_entropy = token_logprobs(rest.logits, r_ids[:, 1:], temperature, with_entropy)
        logp = torch.cat([logp, rest_logp], dim=1)
        entropy = torch.cat([entropy, rest_entropy], dim=1) if with_entropy else None
    return logp * r_mask, entropy, r_mask


def replay_tensor(replay, rows, spans, shape) -> torch.Tensor:
    """The routing tensor ``replay`` (a :class:`trainer.routing_replay.RoutingReplay`) takes for one forward."""
    return routing_tensor(rows, spans, shape, len(replay.blocks), replay.top_k, replay.num_experts)


def _pass_routing(routing, spans, shape) -> torch.Tensor:
    replay, rows = routing
    return replay_tensor(replay, rows, spans, shape)


@dataclass
class PackedRow:
    """Several (prompt, target) examples laid end to end in one row, each attending only to itself."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]: restart at 0 for every example, which is what marks the boundaries
    target_ids: torch.Tensor  # [1, T - 1]: the token each position predicts
    target_mask: torch.Tensor  # [1, T - 1] float: 1 where that token is an assistant (target) token


def pack_examples(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], max_tokens: int
                  ) -> list[PackedRow]:
    """Greedy in-order packing into rows of at most ``max_tokens`` tokens (an example longer than that gets
    a row of its own). No padding is computed at all, which is the point of packing on a CPU.

    Shapes: returns PackedRows with input_ids, position_ids [1, packed_len] and target_ids, target_mask
    [1, packed_len - 1].
    """
    rows, current, length = [], [], 0
    for p, t in zip(prompts, targets):
        n = len(p) + len(t)
        if current and length + n > max_tokens:
            rows.append(current)
            current, length = [], 0
        current.append((list(p), list(t)))
        length += n
    if current:
        rows.append(current)
    packed = []
    for row in rows:
        ids, pos, is_target = [], [], []
        for p, t in row:
            ids += p + t
            pos += list(range(len(p) + len(t)))
            is_target += [0.0] * len(p) + [1.0] * len(t)
        ids_t = torch.tensor([ids], dtype=torch.long)
        packed.append(PackedRow(input_ids=ids_t, position_ids=torch.tensor([pos], dtype=torch.long),
                                target_ids=ids_t[:, 1:], target_mask=torch.tensor([is_target[1:]])))
    return packed


def packed_target_logprobs(model, row: PackedRow) -> torch.Tensor:
    """Logprob of every next token of a packed row, masked to target tokens.

    Shapes: row as :func:`pack_examples` -> returns [1, packed_len - 1] fp32, 0 off target tokens.

    No attention mask is passed: transformers then reads the example boundaries from the restarting
    ``position_ids`` and builds a block-diagonal causal mask, so examples never see each other. A position
    predicting the first token of the next example is masked out by ``target_mask`` (that token is a prompt
    token).
    """
    device = next(model.parameters()).device
    out = model(input_ids=row.input_ids.to(device), position_ids=row.position_ids.to(device), use_cache=False)
    logp, _ = token_logprobs(out.logits[:, :-1, :], row.target_ids.to(device), 1.0, False)
    return logp * row.target_mask.to(device)
