"""The RL stage's own logic around the engines: dynamic sampling, overlong filtering, batches, metrics, resume
bookkeeping. The rollout actor here is a scripted stand-in (the real engine has its own tests); Ray and
the reward workers are real."""
import json
from pathlib import Path

import pytest
import ray

from pipeline.actors import RewardWorker
from pipeline.tracking import MetricsLogger, read_metrics
from rollout.types import Completion, Generation, SamplingSpec
from stages.prompt_stream import PromptStream
from stages.checkpoints import latest_checkpoint
from stages.grpo import RLPlan
from stages.grpo_batch import build_batch, collect_rollouts, score_groups
from stages.grpo_knobs import GRPOLoop
from stages.step_metrics import reward_metrics
from trainer.settings import GRPOSettings

GOOD = "<think>2+2=4</think><answer>4</answer>"
WRONG = "<think>2+2=5</think><answer>5</answer>"


class ScriptedRollout:
    """Answers each prompt with the completions scripted for it (by the prompt's first token)."""

    def __init__(self, script):
        self.script = script
        self.calls = 0

    def generate(self, prompts, sampling, progress=False):
        self.calls += 1
        out = []
        for p in prompts:
            texts = self.script[p[0]]
            out.append(Generation(prompt_ids=list(p), completions=[
                Completion(text=t, token_ids=[7] * (len(t) % 5 + 1), logprobs=[-0.5] * (len(t) % 5 + 1),
                           finish_reason="length" if t == WRONG else "stop") for t in texts]))
        return out

    def n_calls(self):
        return self.calls


class Actors:
    def __init__(self, rollout, rewards):
        self.rollout, self.rewards = rollout, rewards
        self.reference, self.reference_is_trainer = None, False


@pytest.fixture(scope="module")
def ray_local():
    # Workers import the scripted actor from this test module.
    tests_dir = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": f"{tests_dir}:{Path(tests_dir).parent}"}})
    yield
    ray.shutdown()


def _plan(samples, **kw):
    return RLPlan(train=samples, test=[], tokenizer=None, system_prompt=None,
                  loop=GRPOLoop(steps=1, prompts_per_step=2, group_size=2, **kw), sampling=SamplingSpec(n=2),
                  eval_sampling=SamplingSpec(n=1), eval_ks=[1], grpo=GRPOSettings())


def _samples(n):
    # Rendered prompt ids (the pipeline's job) whose first id is the sample's index: what ScriptedRollout keys on.
    return [{"id": f"s{i}", "prompt": f"Q{i}: 2+2?", "answer": "4", "prompt_ids": [i, 1, 2]} for i in range(n)]


def _actors(script):
    rollout = ray.remote(ScriptedRollout).remote(script)
    rewards = [ray.remote(RewardWorker).remote([{"name": "format", "weight": 0.5},
                                                {"name": "correctness", "weight": 1.0}]) for _ in range(2)]
    return Actors(rollout, rewards)


def test_dynamic_sampling_drops_uniform_groups_and_refills(ray_local):
    # Prompts 0 and 2 get all-correct groups (no signal); 1 and 3 are mixed.
    script = {0: [GOOD, GOOD], 1: [GOOD, WRONG], 2: [GOOD, GOOD], 3: [WRONG, GOOD]}
    actors = _actors(script)
    stream = PromptStream(_samples(4), seed=0)
    stream._order = lambda epoch: [0, 1, 2, 3]
    samples, gens, scores, stats = collect_rollouts(actors, stream, _plan(_samples(4), dynamic_sampling=True), 1)
    assert [s["id"] for s in samples] == ["s1", "s3"]
    # Round 1: s0 (dropped), s1; round 2: s2 (dropped); round 3: s3.
    assert stats["groups_dropped"] == 2 and stats["refill_rounds"] == 2 and stats["generated_groups"] == 4
    assert len(scores) == 4 and ray.get(actors.rollout.n_calls.remote()) == 3
    # Without dynamic sampling every group is kept, in one round.
    stream.position = 0
    samples, _, _, stats = collect_rollouts(actors, stream, _plan(_samples(4)), 1)
    assert [s["id"] for s in samples] == ["s0", "s1"] and stats["refill_rounds"] == 0


def test_dynamic_sampling_gives_up_after_max_rounds(ray_local):
    actors = _actors({i: [GOOD, GOOD] for i in range(4)})
    stream = PromptStream(_samples(4), seed=0)
    plan = _plan(_samples(4), dynamic_sampling=True, max_refill_rounds=1)
    samples, _, _, stats = collect_rollouts(actors, stream, plan, 1)
    assert len(samples) == 2 and stats["refill_rounds"] == 1  # the last round keeps what it gets


def test_batch_advantages_overlong_filter_and_metrics(ray_local):
    actors = _actors({0: [GOOD, WRONG], 1: [GOOD, GOOD]})
    stream = PromptStream(_samples(2), seed=0)
    stream._order = lambda epoch: [0, 1]
    plan = _plan(_samples(2), overlong_filter=True)
    _, gens, scores, _ = collect_rollouts(actors, stream, plan, 1)
    batch = build_batch(gens, scores, plan)
    assert batch.rewards == [1.5, 0.5, 1.5, 1.5]
    assert batch.advantages[0] > 0 > batch.advantages[1] and batch.advantages[2:] == [0.0, 0.0]
    assert batch.loss_mask == [True, False, True, True]  # WRONG is scripted as truncated
    m = reward_metrics(scores, batch)
    assert m["accuracy"] == 0.75 and m["format_rate"] == 1.0 and m["truncated_fraction"] == 0.25
    assert m["reward/correctness/mean"] == 0.75 and m["reasons/correctness/wrong"] == 0.25
    assert m["advantage/zero_fraction"] == 0.5


class EchoWorker:
    """A reward worker that scores a completion by the number it spells, and remembers what it was sent."""

    def __init__(self):
        self.sent = []

    def score(self, texts, rows):
        self.sent.append(list(texts))
        return [(float(t), {"echo": (float(t), "ok")}) for t in texts]

    def received(self):
        return self.sent


def _numbered_groups(*sizes):
    start, gens = 0, []
    for size in sizes:
        gens.append(Generation(prompt_ids=[0], completions=[
            Completion(text=str(i), token_ids=[1], logprobs=None, finish_reason="stop")
            for i in range(start, start + size)]))
        start += size
    return gens


def test_score_groups_spreads_completions_round_robin_and_keeps_their_order(ray_local):
    # Contiguous chunks gave one worker every costly row of a group (a reward model's instruction prompts);
    # worker k now gets completions k, k + n, ... and the scores still come back in prompt-major order.
    workers = [ray.remote(EchoWorker).remote() for _ in range(3)]
    scores = score_groups(Actors(None, workers), _samples(2), _numbered_groups(4, 3))
    assert [total for total, _ in scores] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [ray.get(w.received.remote()) for w in workers] == [[["0", "3", "6"]], [["1", "4"]], [["2", "5"]]]
    # Fewer completions than workers: only as many workers are asked.
    few = [ray.remote(EchoWorker).remote() for _ in range(3)]
    assert [t for t, _ in score_groups(Actors(None, few), _samples(1), _numbered_groups(2))] == [0.0, 1.0]
    assert [ray.get(w.received.remote()) for w in few] == [[["0"]], [["1"]], []]


def test_prompt_stream_resumes_at_its_position():
    data = list(range(10))
    a = PromptStream(data, seed=3)
    first = a.take(7) + a.take(7)  # crosses an epoch boundary
    b = PromptStream(data, seed=3)
    b.take(7)
    resumed = PromptStream(data, seed=3)
    resumed.position = b.position
    assert resumed.take(7) == first[7:]
    assert sorted(first[:10]) == data  # one epoch is a permutation
    with pytest.raises(ValueError):
        PromptStream([], seed=0)


def test_metrics_logger_truncates_redone_steps(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(5):
        logger.log(step, {"x": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "x"')  # a line torn by a kill
    assert logger.truncate_after(3) == 2
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]


def test_incomplete_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00002").mkdir(parents=True)
    (root / "step_00002" / "state.json").write_text(json.dumps({"step": 2, "data_position": 16}))
    assert latest_checkpoint(tmp_path) is None  # no pointer yet: the save did not finish
    (root / "latest").write_text("step_00002")
    ckpt, state = latest_checkpoint(tmp_path)
    assert ckpt == root / "step_00002" and state["data_position"] == 16
    (root / "latest").write_text("step_00004")  # pointer to a folder that never completed
    assert latest_checkpoint(Path(tmp_path)) is None
