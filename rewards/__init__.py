"""Pure reward functions ``(completion, sample, **options) -> Reward`` and their registry.

Every reward here returns a :class:`Reward`: a float that also carries a short ``reason``. See
``tasks/schema.md`` for the sample fields each reward reads.
"""
from rewards.base import Reward, reason_of
from rewards.format import extract_answer_block, extract_think_block, format_reward
from rewards.accuracy import accuracy_reward
from rewards.countdown import countdown_reward
from rewards.instruction import instruction_reward
from rewards.language import language_consistency_reward
from rewards.length import overlong_penalty
from rewards.code import code_reward, extract_code
from rewards.registry import RewardFailure, RewardSpec, correctness_reward, register, resolve, weighted_sum

__all__ = [
    "Reward",
    "reason_of",
    "format_reward",
    "accuracy_reward",
    "countdown_reward",
    "instruction_reward",
    "language_consistency_reward",
    "overlong_penalty",
    "correctness_reward",
    "code_reward",
    "extract_code",
    "register",
    "resolve",
    "RewardSpec",
    "RewardFailure",
    "weighted_sum",
    "extract_answer_block",
    "extract_think_block",
]
