"""Small datasets in the shapes users bring, written by the tests that use them (tests/test_data_shapes*.py):

- GSM8K: ``question``, ``answer`` = worked steps ending ``#### N`` (one ``#### 1,234``);
- MATH: ``problem``, ``solution`` with the answer in a (nested) ``\\boxed{}``, plus ``level`` and ``type``;
- OpenR1-Math: ``problem``, ``answer``, ``messages`` (a user turn and an assistant turn with ``<think>`` and a
  boxed answer), ``generations`` (a large list column), ``uuid``, ``correctness_math_verify``.

Each row's gold answer is in ``GOLD`` by shape, in row order, so a test can check what reached a stage.
"""
from __future__ import annotations

import json
from pathlib import Path

GSM8K = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7 apples.", "7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "6 * 5 = <<6*5=30>>30 eggs.", "30"),
    ("A shop sells 617 pens a day. How many pens does it sell in 2 days?", "617 * 2 = 1234 pens.", "1,234"),
    ("Sam had 10 sweets and ate 4. How many are left?", "10 - 4 = 6 sweets.", "6"),
]
MATH = [
    ("What is $1/4 + 1/4$?", "Adding, $\\frac{1}{4}+\\frac{1}{4} = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("Compute $2^3$.", "We have $2^3 = 2 \\cdot 2 \\cdot 2 = \\boxed{8}$.", "8"),
    ("What is $9 - 5$?", "Subtracting, $9 - 5 = 4$, so the answer is $\\boxed{4}$.", "4"),
    ("Solve $x + 2 = 5$.", "Subtract 2 from both sides: $x = \\boxed{3}$.", "3"),
]
OPENR1 = [
    ("What is 5 + 6?", "11", "5 + 6 = 11."),
    ("What is 3 * 4?", "12", "3 * 4 = 12."),
    ("What is 20 / 5?", "4", "20 / 5 = 4."),
    ("What is 7 - 2?", "5", "7 - 2 = 5."),
]
GOLD = {
    "gsm8k": ["7", "30", "1234", "6"],  # 1,234 -> 1234
    "math": [answer for _, _, answer in MATH],
    "openr1": [answer for _, answer, _ in OPENR1],
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_fixtures(folder: Path) -> dict[str, Path]:
    """Write ``gsm8k.jsonl``, ``math.jsonl`` and ``openr1.jsonl`` into ``folder``; their paths by shape."""
    folder.mkdir(parents=True, exist_ok=True)
    gsm8k = [{"question": q, "answer": f"{steps}\n#### {n}"} for q, steps, n in GSM8K]
    math = [{"problem": p, "solution": s, "level": "Level 1", "type": "Prealgebra"} for p, s, _ in MATH]
    openr1 = [{"problem": p, "answer": a, "uuid": f"u-{i}", "correctness_math_verify": [True, False],
               "generations": [f"<think>\n{steps}\n</think>\nThe answer is $\\boxed{{{a}}}$."] * 2,
               "messages": [{"role": "user", "content": p},
                            {"role": "assistant", "content": f"<think>\n{steps}\n</think>\n"
                                                             f"The answer is $\\boxed{{{a}}}$."}]}
              for i, (p, a, steps) in enumerate(OPENR1)]
    return {"gsm8k": _write(folder / "gsm8k.jsonl", gsm8k), "math": _write(folder / "math.jsonl", math),
            "openr1": _write(folder / "openr1.jsonl", openr1)}


def record_rows(completion: str, sample, *, path: str) -> float:
    """A reward (weight 0 in the tests) that appends what each reward row holds to ``path``: its id, task,
    gold answer and field names, so a test sees what reached the reward workers. Always 0.0."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": sample.get("id"), "task": sample.get("task"), "answer": sample.get("answer"),
                                 "fields": sorted(sample)}) + "\n")
    return 0.0
