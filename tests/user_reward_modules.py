"""Users' own reward modules, written into a folder outside the repo by a test (not a test file).

Each module is a reward as the field writes it: TRL's batched ``(prompts, completions, **kwargs)``, verl's
``compute_score(data_source, solution_str, ground_truth, extra_info=None)``, an ``async def`` one, one that
registers itself by name with ``@register`` (for ``rewards.plugins``), and one that raises on every call.
They reward things a cold-start SmolLM2 already does (a ``</think>`` tag, a digit of the gold answer), so a
2-step RL run gets non-zero rewards from them.

    folder = write_user_reward_modules(tmp_path / "user")
    # then run `r1` with cwd=folder (or PYTHONPATH=folder) and name e.g. "my_trl_rewards:think_closed"
"""
from __future__ import annotations

import textwrap
from pathlib import Path

MODULES = {
    "my_trl_rewards": '''
        """TRL-style: batched, dataset columns arrive as keyword lists; None = does not apply."""


        def think_closed(prompts, completions, **kwargs):
            return [1.0 if "</think>" in c else 0.0 for c in completions]


        def has_digit(prompts, completions, **kwargs):
            # The base SmolLM2 writes numbers for arithmetic prompts: signal without a cold start.
            return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]


        def answer_mentioned(prompts, completions, answer, task, **kwargs):
            # Scores only the arithmetic task; other tasks' rows are None ("does not apply").
            return [(1.0 if str(a) in c else 0.0) if t == "arithmetic" else None
                    for c, a, t in zip(completions, answer, task)]
    ''',
    "my_verl_rewards": '''
        """verl-style: one completion per call, the gold answer as ground_truth; a dict carries 'score'."""


        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            digit = str(ground_truth)[:1]
            hit = bool(digit) and digit in solution_str
            return {"score": 1.0 if hit else 0.0, "data_source": data_source}
    ''',
    "my_async_rewards": '''
        """async def rewards (an LLM judge is async): ours and TRL's signatures."""
        import asyncio


        async def judged_length(completion, sample, *, limit=400):
            await asyncio.sleep(0)
            return 1.0 if 0 < len(completion) <= limit else 0.0


        async def judged_batch(prompts, completions, **kwargs):
            await asyncio.sleep(0)
            return [min(1.0, len(c) / 100.0) for c in completions]
    ''',
    "my_plugin_rewards": '''
        """Registers a reward by name on import: configs list this module in rewards.plugins."""
        from rewards import register


        @register("has_think", override=True)
        def has_think(completion, sample):
            return 1.0 if "<think>" in completion or "</think>" in completion else 0.0
    ''',
    "my_broken_rewards": '''
        """A reward that raises on every call: a run must stop, not train on zeros."""


        def always_raises(completion, sample):
            raise KeyError("solution")
    ''',
}


def write_user_reward_modules(folder: Path) -> Path:
    """Write every module of :data:`MODULES` as ``<folder>/<name>.py``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in MODULES.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    return folder
