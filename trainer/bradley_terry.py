"""A Bradley-Terry reward model: a sequence-classification head on the policy's causal LM, trained on
preference pairs (stage 5, general RL).

The model is ``AutoModelForSequenceClassification`` with one label, loaded from a causal-LM dir (the score
head is new and random; the body is the LM's). A conversation is scored at its last non-pad token, so
rows are right-padded with ``config.pad_token_id``. The loss on a pair is ``-log sigmoid(r_chosen -
r_rejected)``: the probability that the chosen response is preferred under the Bradley-Terry model.

Plain classes (no Ray); :mod:`rewards.learned_reward` scores completions with the saved model.
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .devices import autocast_context, default_device

log = logging.getLogger("r1.reward_model")


# ---- the loss -------------------------------------------------------------------------------------------

def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float | None = None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of ``-logsigmoid(chosen - rejected - margin)`` over the pairs, and metrics.

    ``chosen`` / ``rejected`` are the scores of the two responses of each pair (same shape); ``margin``
    (same shape or a scalar) asks the chosen one to win by at least that much. Metrics: ``accuracy``
    (fraction of pairs with ``chosen > rejected``, ties count as wrong) and ``margin_mean`` (mean of
    ``chosen - rejected``), both without the margin. Raises ``ValueError`` on mismatched shapes or no pairs.
    """
    if chosen.shape != rejected.shape:
        raise ValueError(f"bradley_terry_loss: chosen has shape {tuple(chosen.shape)}, "
                         f"rejected {tuple(rejected.shape)}")
    if chosen.numel() == 0:
        raise ValueError("bradley_terry_loss: no pairs")
    diff = chosen.float() - rejected.float()
    if margin is not None:
        margin = torch.as_tensor(margin, dtype=torch.float32, device=diff.device)
        if margin.dim() and margin.shape != diff.shape:
            raise ValueError(f"bradley_terry_loss: margin has shape {tuple(margin.shape)}, "
                             f"expected {tuple(diff.shape)} or a scalar")
        logits = diff - margin
    else:
        logits = diff
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {"accuracy": float((diff > 0).float().mean()), "margin_mean": float(diff.mean())}
    return loss, metrics


# ---- tokenization -----------------------------------------------------------------------------------------

def encode_conversation(tokenizer, prompt_messages: Sequence[Mapping[str, str]], response: str) -> list[int]:
    """Token ids of the whole conversation ``prompt_messages + [assistant: response]``.

    The chat template is applied once to the full conversation (so the ids are exactly what the template
    renders, with the end-of-turn token after the response) and the text is tokenized without extra special
    tokens (templates already hold the BOS they want).
    """
    messages = [dict(m) for m in prompt_messages] + [{"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_pair(tokenizer, prompt_messages: Sequence[Mapping[str, str]], chosen_text: str, rejected_text: str,
                  max_length: int) -> tuple[list[int], list[int]] | None:
    """``(chosen_ids, rejected_ids)`` of one preference pair, or None when either is over ``max_length``
    tokens (truncating would cut the end-of-turn token where the score is read, so such pairs are dropped)."""
    chosen = encode_conversation(tokenizer, prompt_messages, chosen_text)
    rejected = encode_conversation(tokenizer, prompt_messages, rejected_text)
    if len(chosen) > max_length or len(rejected) > max_length:
        return None
    return chosen, rejected


# ---- scoring helpers shared with rewards.learned_reward -----------------------------------------------------

def pad_id_of(tokenizer) -> int:
    """The id rows are right-padded with: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad rows with")
    return int(pad)


def load_sequence_classifier(model_dir: str, tokenizer, *, dtype=torch.float32):
    """``AutoModelForSequenceClassification`` with one label from ``model_dir``, ``config.pad_token_id`` set."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        # The head reads the score at the last token that is not padding: it must know the pad id.
        model.config.pad_token_id = pad_id_of(tokenizer)
    return model


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows`` right-padded to the longest."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every row needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids.to(device), mask.to(device)


_warned_pad_end = False


def forward_scores(model, rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """One score per row (shape ``[len(rows)]``, float32), read at each row's last non-pad token."""
    global _warned_pad_end
    pad_id = int(model.config.pad_token_id)
    if not _warned_pad_end and any(r and r[-1] == pad_id for r in rows):
        _warned_pad_end = True  # e.g. SmolLM2 pads with <|im_end|> and a template with no text after it
        log.warning("a row ends with the pad token id %d: its score is read at the last token before it", pad_id)
    ids, mask = right_pad(rows, pad_id, device)
    logits = model(input_ids=ids, attention_mask=mask).logits  # [rows, 1]
    return logits[:, 0].float()


# ---- the trainer ------------------------------------------------------------------------------------------

@dataclass
class RewardModelSettings:
    lr: float = 1e-5
    weight_decay: float = 0.0
    batch_size: int = 8  # pairs per optimizer step (used by :meth:`RewardModelTrainer.train`)
    micro_batch_size: int = 8  # pairs per forward/backward (2x rows: chosen and rejected together)
    epochs: float = 1.0  # passes over the pairs in :meth:`RewardModelTrainer.train` (fractions allowed)
    max_length: int = 512  # tokens per conversation; longer rows are refused by train_step
    precision: str = "bf16"  # "bf16": fp32 master weights, bf16 autocast compute; "fp32"
    grad_clip: float = 1.0  # max global gradient norm; <= 0 turns clipping off
    seed: int = 0
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)


class RewardModelTrainer:
    """A scalar-head reward model under training: AdamW on the Bradley-Terry loss of preference pairs."""

    def __init__(self, model_dir: str, settings: RewardModelSettings | None = None) -> None:
        from transformers import AutoTokenizer

        self.settings = s = settings or RewardModelSettings()
        if s.micro_batch_size < 1 or s.batch_size < 1:
            raise ValueError(f"batch_size={s.batch_size}, micro_batch_size={s.micro_batch_size}: must be >= 1")
        autocast_context(s.precision, torch.device("cpu"))  # a bad precision fails here, not mid-run
        if s.threads:
            torch.set_num_threads(s.threads)
        torch.manual_seed(s.seed)  # the new score head's initialisation
        self.device = default_device()
        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = load_sequence_classifier(self.model_dir, self.tokenizer).to(self.device)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        self.optimizer_steps = 0

    def train_step(self, chosen_ids: Sequence[Sequence[int]], rejected_ids: Sequence[Sequence[int]],
                   margins: Sequence[float] | None = None) -> dict[str, float]:
        """One optimizer step on these pairs; the loss is the mean over all of them whatever the micro-batching.

        Returns ``loss``, ``accuracy``, ``margin_mean`` (before the step), ``grad_norm``, ``pairs``, ``seconds``.
        Raises ``ValueError`` on a length mismatch, an empty row or a row over ``settings.max_length``.
        """
        started = time.perf_counter()
        n = len(chosen_ids)
        if n == 0 or n != len(rejected_ids) or (margins is not None and len(margins) != n):
            raise ValueError(f"train_step: {n} chosen, {len(rejected_ids)} rejected"
                             + ("" if margins is None else f", {len(margins)} margins") + ": need equal, non-zero")
        longest = max(len(r) for r in (*chosen_ids, *rejected_ids))
        if longest > self.settings.max_length:
            raise ValueError(f"train_step: a row has {longest} tokens, over max_length={self.settings.max_length}")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "accuracy": 0.0, "margin_mean": 0.0}
        mb = self.settings.micro_batch_size
        for start in range(0, n, mb):
            chosen, rejected = chosen_ids[start:start + mb], rejected_ids[start:start + mb]
            k = len(chosen)
            with autocast_context(self.settings.precision, self.device):
                scores = forward_scores(self.model, [*chosen, *rejected], self.device)
            margin = None if margins is None else torch.tensor(list(margins[start:start + mb]), dtype=torch.float32)
            loss, metrics = bradley_terry_loss(scores[:k], scores[k:], margin)
            (loss * (k / n)).backward()  # the mean of micro-batch means, weighted by size = the batch mean
            sums["loss"] += float(loss.detach()) * k
            for name, value in metrics.items():
                sums[name] += value * k
        grad_norm = self._optimizer_step()
        out = {name: value / n for name, value in sums.items()}
        out.update(grad_norm=grad_norm, pairs=float(n), seconds=time.perf_counter() - started)
        return out

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.settings.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip and clip > 0 else float("inf"))
        if torch.isfinite(norm):
            self.optimizer.step()
        else:  # one bad batch must not poison the weights and Adam's moments
            log.warning("non-finite gradient norm %s: optimizer step skipped", float(norm))
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return float(norm)

    def train(self, chosen_ids: Sequence[Sequence[int]], rejected_ids: Sequence[Sequence[int]], *,
              on_step=None) -> list[dict[str, float]]:
        """``settings.epochs`` passes over the pairs in shuffled batches of ``settings.batch_size``.

        ``ceil(epochs * pairs / batch_size)`` steps; each epoch is a fresh seeded shuffle. ``on_step(step,
        metrics)`` is called after each step (for logging). Returns every step's metrics.
        """
        n = len(chosen_ids)
        if n == 0 or n != len(rejected_ids):
            raise ValueError(f"train: {n} chosen and {len(rejected_ids)} rejected rows: need equal, non-zero")
        bs = self.settings.batch_size
        total = max(1, math.ceil(self.settings.epochs * n / bs))
        rng = random.Random(self.settings.seed)
        order: list[int] = []
        history = []
        for step in range(total):
            if len(order) < bs:
                fresh = list(range(n))
                rng.shuffle(fresh)
                order += fresh
            batch, order = order[:bs], order[bs:]
            metrics = self.train_step([chosen_ids[i] for i in batch], [rejected_ids[i] for i in batch])
            history.append(metrics)
            if on_step is not None:
                on_step(step, metrics)
        return history

    @torch.no_grad()
    def scores(self, ids: Sequence[Sequence[int]]) -> list[float]:
        """The model's score of each row (eval mode, no grad), in ``micro_batch_size * 2`` rows per forward."""
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        try:
            rows = 2 * self.settings.micro_batch_size
            with autocast_context(self.settings.precision, self.device):
                for start in range(0, len(ids), rows):
                    out += forward_scores(self.model, ids[start:start + rows], self.device).cpu().tolist()
        finally:
            self.model.train(was_training)
        return out

    def evaluate(self, chosen_ids: Sequence[Sequence[int]], rejected_ids: Sequence[Sequence[int]]) -> dict[str, float]:
        """Bradley-Terry ``loss``, ``accuracy`` and ``margin_mean`` on held-out pairs, without training."""
        chosen, rejected = self.scores(chosen_ids), self.scores(rejected_ids)
        loss, metrics = bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected))
        return {"loss": float(loss), **metrics, "pairs": float(len(chosen))}

    def save_pretrained(self, out_dir: str | os.PathLike) -> str:
        """An HF sequence-classification dir (fp32 weights, config, tokenizer) at ``out_dir``.

        Written to a temporary folder beside it and renamed into place, so a crash leaves either the old
        dir or the new one, never half a model. An existing ``out_dir`` is replaced.
        """
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the model dir should read like any other
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if out.exists():  # a directory cannot be replaced in one rename: move the old one aside first
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "dir")
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:
                os.replace(old / "dir", out)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        return str(out)

