"""A deterministic reward for end-to-end tests of the zero-advantage skip (not a test file).

Config: ``{name: "tests.mixed_rewards:split_groups", options: {constant_ids: [...]}}``. Ray's reward
workers import it too: the repo root is on their PYTHONPATH (pipeline/cluster.py).
"""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence


def split_groups(completion: str, sample: Mapping, *, constant_ids: Sequence[str] = (),
                 constant: float = 0.6) -> float:
    """``constant`` for every completion of a sample whose id is in ``constant_ids`` (an all-equal group:
    advantage exactly 0, rows skipped), else a value in [0, 1) that differs between distinct completions
    (a mixed group: trained). A checksum of the text rather than its length: completions cut at
    ``max_new_tokens`` share a length, distinct texts almost never share a checksum.
    """
    if sample.get("id") in constant_ids:
        return constant
    return (zlib.crc32(completion.encode("utf-8")) % 1000) / 1000.0
