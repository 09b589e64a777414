"""A resumable, seeded stream of training prompts: each epoch a fresh shuffle, the position saved in checkpoints."""
from __future__ import annotations

import random
from typing import Sequence


class PromptStream:
    """Yields samples in a seeded per-epoch order; ``position`` (samples consumed) is all a resume needs.

    >>> s = PromptStream(["a", "b", "c"], seed=0); first = s.take(2); s2 = PromptStream(["a", "b", "c"], seed=0)
    >>> s2.position = 2; s2.take(1) == PromptStream(["a", "b", "c"], seed=0).take(3)[2:]
    True
    """

    def __init__(self, samples: Sequence, seed: int) -> None:
        if not samples:
            raise ValueError("PromptStream: no training samples")
        self.samples = list(samples)
        self.seed = seed
        self.position = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list:
        """The next ``n`` samples (crossing into the next epoch's shuffle when one runs out)."""
        out = []
        while len(out) < n:
            epoch, offset = divmod(self.position, len(self.samples))
            order = self._order(epoch)
            chunk = order[offset:offset + (n - len(out))]
            out += [self.samples[i] for i in chunk]
            self.position += len(chunk)
        return out

    @property
    def epoch(self) -> float:
        return self.position / len(self.samples)
