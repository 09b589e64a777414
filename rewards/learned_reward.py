"""Reward from a trained reward model (a one-label HF sequence-classification dir, e.g. written by
:class:`trainer.bradley_terry.RewardModelTrainer`).

The conversation is tokenized exactly as in training (:func:`trainer.bradley_terry.encode_conversation`:
the chat template applied once to prompt + completion) and scored at its last token. Models are loaded
once per process and path, on first use (inside a Ray reward worker, say), and shared by its threads.
torch and transformers are imported only when a model is first needed.
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewards.base import Reward

logger = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, str]]


class RewardModelScorer:
    """A reward model held for scoring: CPU (or the GPU if there is one), eval mode, no grad, thread-safe.

    ``precision``: ``"fp32"`` (default) or ``"bf16"``: weights held in bf16 and autocast (measured on the
    quickstart's: 0.74 against 0.87 GiB PSS per process holding it, 0.29 against 0.41 s per completion on
    one thread of a CPU with AVX-512 BF16); its scores agree with fp32 to ~0.2 on a spread of ~1.1 and
    rank 98% of pairs the same way. ``max_length``: conversations longer than this many tokens keep
    their last ``max_length`` tokens (None: no limit). Raises ``ValueError`` when the dir is not a
    one-label sequence classifier (a plain causal LM would get a random score head).
    """

    def __init__(self, model_dir: str, *, precision: str = "fp32", batch_size: int = 8,
                 max_length: int | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from trainer.bradley_terry import autocast_context, load_sequence_classifier

        if not Path(model_dir).is_dir():
            raise ValueError(f"{model_dir}: no such directory")
        config = AutoConfig.from_pretrained(str(model_dir))
        architectures = getattr(config, "architectures", None) or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures) or config.num_labels != 1:
            raise ValueError(f"{model_dir}: not a reward model (architectures {architectures}, "
                             f"num_labels {config.num_labels}); expected a one-label *ForSequenceClassification")
        autocast_context(precision, torch.device("cpu"))  # validates the name
        self.model_dir = str(model_dir)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = load_sequence_classifier(self.model_dir, self.tokenizer).to(self.device)
        if precision == "bf16":
            self.model.to(torch.bfloat16)
        self.model.eval()
        self.model.requires_grad_(False)
        self._lock = threading.Lock()

    def encode(self, prompt_messages: Messages, completion: str) -> list[int]:
        """The token ids the model scores for this conversation."""
        from trainer.bradley_terry import encode_conversation

        ids = encode_conversation(self.tokenizer, prompt_messages, completion)
        return ids[-self.max_length:] if self.max_length else ids

    def score(self, prompt_messages: Messages, completion: str) -> float:
        """The raw score of ``completion`` as the assistant's answer to ``prompt_messages``."""
        return self.score_batch([(prompt_messages, completion)])[0]

    def score_batch(self, items: Sequence[tuple[Messages, str]]) -> list[float]:
        """Raw scores of ``(prompt_messages, completion)`` items, in order, ``batch_size`` rows per forward."""
        import torch

        from trainer.bradley_terry import autocast_context, forward_scores

        rows = [self.encode(messages, completion) for messages, completion in items]
        out: list[float] = []
        with self._lock, torch.no_grad(), autocast_context(self.precision, self.device):
            for start in range(0, len(rows), self.batch_size):
                out += forward_scores(self.model, rows[start:start + self.batch_size], self.device).cpu().tolist()
        return out


# One scorer per model path and process; None = the path failed to load (logged once, not retried).
_SCORERS: dict[str, RewardModelScorer | None] = {}
_SCORERS_LOCK = threading.Lock()


def get_scorer(model: str, precision: str = "fp32") -> RewardModelScorer | None:
    """The process's scorer for ``model`` at ``precision`` (loaded on first use), or None if it cannot be
    loaded."""
    path = str(Path(model).expanduser().resolve())
    key = f"{path}@{precision}"
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            try:
                _SCORERS[key] = RewardModelScorer(path, precision=precision)
            except Exception as error:  # missing dir, not a reward model, corrupt weights...: same answer
                logger.error("reward model %s could not be loaded, its reward is 0 (model_unavailable): %s: %s",
                             model, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                _SCORERS[key] = None
        return _SCORERS[key]


def clear_scorers() -> None:
    """Forget loaded (and failed) models, e.g. after a reward model was retrained into the same path."""
    with _SCORERS_LOCK:
        _SCORERS.clear()


def prompt_messages_of(sample: Mapping[str, Any], system_prompt: str | None = None) -> list[dict[str, str]] | None:
    """The conversation before the completion: ``sample["prompt"]`` as a user message (a list of chat
    messages is taken as it is), after ``system_prompt`` when given; None when the sample has no prompt."""
    prompt = sample.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and not isinstance(prompt, str) and prompt:
        messages = [dict(m) for m in prompt]
    else:
        return None
    if system_prompt is not None and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def reward_model_reward(completion: str, sample: Mapping[str, Any], *, model: str, scale: float = 1.0,
                        offset: float = 0.0, squash: bool = True, system_prompt: str | None = None,
                        precision: str = "fp32") -> Reward:
    """The reward model's score of ``completion`` for ``sample["prompt"]``.

    ``sigmoid((raw - offset) * scale)`` in (0, 1) with ``squash`` (default), else the raw score. ``offset``
    and ``scale`` centre and spread the raw scores (e.g. their mean and 1/std on held-out data).
    ``precision``: ``"fp32"`` or ``"bf16"`` (see :class:`RewardModelScorer`; each has its own cached scorer).

    Reasons: ``ok``; ``empty_completion`` (0.0); ``missing_prompt`` (0.0); ``model_unavailable`` (0.0: the
    dir does not load; logged once per process, never raised); ``non_finite_score`` (0.0).
    """
    if precision not in ("fp32", "bf16"):  # a config typo is named, not hidden as model_unavailable
        raise ValueError(f"reward_model: precision={precision!r}: expected 'fp32' or 'bf16'")
    if not completion or not completion.strip():
        return Reward(0.0, "empty_completion")
    messages = prompt_messages_of(sample, system_prompt)
    if messages is None:
        return Reward(0.0, "missing_prompt")
    scorer = get_scorer(model, precision)
    if scorer is None:
        return Reward(0.0, "model_unavailable")
    raw = scorer.score(messages, completion)
    if not math.isfinite(raw):
        return Reward(0.0, "non_finite_score")
    if not squash:
        return Reward(raw, "ok")
    z = (raw - offset) * scale
    value = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # no overflow
    return Reward(value, "ok")
