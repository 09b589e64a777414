"""The README's example of a user unit-testing their own reward (kept in sync with README.md)."""
from rewards import format_reward, weighted_sum


def brevity(completion, sample, *, limit=300):
    """1.0 for a well-formed answer of at most `limit` characters."""
    return 1.0 if format_reward(completion, sample) == 1.0 and len(completion) <= limit else 0.0


def test_brevity_rewards_short_well_formed_answers():
    sample = {"prompt": "2+2?", "answer": "4"}
    assert brevity("<think>2+2=4</think><answer>4</answer>", sample) == 1.0
    assert brevity("<think>" + "hmm " * 200 + "</think><answer>4</answer>", sample) == 0.0
    assert brevity("4", sample) == 0.0


def test_brevity_combines_with_builtin_rewards():
    score = weighted_sum([("accuracy", 1.0, {}), (brevity, 0.5, {"limit": 100})])
    total, parts = score("<think>2+2=4</think><answer>4</answer>", {"prompt": "2+2?", "answer": "4"})
    assert total == 1.5 and parts["accuracy"].reason == "ok"


def test_readme_example_matches_this_file():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = Path(__file__).read_text().split('"""', 2)[2].split("\n\n\ndef test_readme_example")[0].strip()
    assert body in readme
