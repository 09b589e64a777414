"""Synthetic tasks with verifiable answers, splits, cold-start demonstrations and data loading.

Samples follow tasks/schema.md, the contract with ``rewards/``. Typical use::

    import tasks
    train = tasks.build({"arithmetic": {"n": 2000, "difficulty": 1}, "countdown": 500}, seed=0, split="train")
    test = tasks.build({"arithmetic": 200}, seed=0, split="test")       # never shares a prompt with train
    demos = tasks.make_demonstrations(train[:1000])                     # cold-start SFT chat examples
    tasks.write_jsonl(train, "runs/x/data/train.jsonl")
    mine = tasks.load_samples("data/my.jsonl", prompt_field="q", answer_field="a")
"""
from .arithmetic import generate_arithmetic
from .code import generate_code
from .countdown import generate_countdown
from .demonstrations import format_r1_response, make_demonstration, make_demonstrations
from .instruction import describe_constraint, generate_instruction
from .linear_equation import generate_linear_equation
from .loaders import load_chat_samples, load_samples
from .mix import build, normalize_mix
from .registry import TASKS, get_generator, register_task
from .sampling import TEST_FRACTION, split_of
from .splits import Splits, make_splits
from .storage import read_jsonl, to_hf_dataset, write_jsonl, write_parquet
from .word_problem import generate_word_problem

__all__ = [
    "TASKS",
    "TEST_FRACTION",
    "Splits",
    "build",
    "describe_constraint",
    "format_r1_response",
    "generate_arithmetic",
    "generate_code",
    "generate_countdown",
    "generate_instruction",
    "generate_linear_equation",
    "generate_word_problem",
    "get_generator",
    "load_chat_samples",
    "load_samples",
    "make_demonstration",
    "make_demonstrations",
    "make_splits",
    "normalize_mix",
    "read_jsonl",
    "register_task",
    "split_of",
    "to_hf_dataset",
    "write_jsonl",
    "write_parquet",
]
