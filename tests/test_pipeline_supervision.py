"""Fast tests of the RL run's supervision parts: fault specs and their one-time firing, the split of prompt
groups over rollout engines, the balance figures, the timeout message, and per-group seeds of the
transformers engine (what makes M engines sample what one does)."""
import os

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.faults import Fault, FaultInjector, parse_fault, parse_faults, with_faults
from stages.rollout_pool import balance_groups
from stages.supervision import timeout_message
from stages.step_metrics import engine_metrics


def test_fault_parsing():
    assert parse_fault("rollout:generate:2:kill") == Fault("rollout", "generate", 2, "kill")
    assert parse_fault(" driver:step:3:hang ") == Fault("driver", "step", 3, "hang")
    assert parse_faults(["reward:score:1:kill", ""]) == [Fault("reward", "score", 1, "kill")]
    for bad, says in [("rollout:generate:2", "ROLE:METHOD:CALL:ACTION"), ("gpu:generate:1:kill", "role 'gpu'"),
                      ("rollout:generate:0:kill", "CALL '0'"), ("rollout:generate:two:kill", "CALL 'two'"),
                      ("rollout:generate:1:explode", "action 'explode'"), ("driver:generate:1:kill", "driver:step"),
                      ("rollout:gen-erate:1:kill", "method")]:
        with pytest.raises(ValueError, match=says):
            parse_fault(bad)


def test_fault_config_validator_names_the_field():
    assert load_config(None, ["cluster.faults=['trainer:train_grpo:2:kill']"]).cluster.faults
    with pytest.raises(ConfigError) as err:
        load_config(None, ["cluster.faults=['rollout:generate:1:boom']"])
    assert "cluster.faults" in str(err.value) and "\n" not in str(err.value)


class Worker:
    def __init__(self, base):
        self.base = base

    def work(self, x):
        return self.base + x


def test_fault_fires_at_its_call_once_per_run(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))  # a kill would end pytest itself
    faults = [Fault("rollout", "work", 2, "kill")]
    assert with_faults(Worker, "reward", faults, tmp_path) is Worker  # not this role's fault: the class as is
    cls = with_faults(Worker, "rollout", faults, tmp_path)
    first = cls(10)
    assert first.work(1) == 11 and exits == []
    first.work(1)
    assert exits == [1]  # the second call fired
    replacement = cls(10)  # a new process counts from 1 again, but the marker says the fault has fired
    replacement.work(1), replacement.work(1), replacement.work(1)
    assert exits == [1] and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(ValueError, match="no method nope"):
        with_faults(Worker, "rollout", [Fault("rollout", "nope", 1, "kill")], tmp_path)


def test_driver_fault_counts_steps(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    driver = FaultInjector("driver", [Fault("driver", "step", 2, "kill"), Fault("rollout", "generate", 1, "kill")],
                           tmp_path)
    assert driver and not FaultInjector("reward", driver.faults, tmp_path)
    driver.check("step", count=1)
    assert exits == []
    driver.check("step", count=2)
    driver.check("step", count=2)  # the rerun driver reaches step 2 again: no second firing
    assert exits == [1]


def test_balance_groups_keeps_groups_whole_and_balances_tokens():
    costs = [10, 10, 10, 10, 10, 10]
    shares = balance_groups(costs, 2)
    assert sorted(i for s in shares for i in s) == list(range(6)) and [len(s) for s in shares] == [3, 3]
    assert all(s == sorted(s) for s in shares)  # each engine's share in input order
    # Tokens, not counts: one long prompt weighs as much as the three short ones.
    shares = balance_groups([30, 10, 10, 10], 2)
    assert shares == [[0], [1, 2, 3]]
    # Fewer groups than engines: the first engines get one each, the rest none.
    assert balance_groups([5, 7], 3) == [[1], [0], []]
    # Longest-first is within 4/3 of the best split (here 14 each): 16, 13, 13, never one engine's 24 + 18.
    loads = [sum(c for i, c in enumerate([9, 8, 7, 6, 5, 4, 3]) if i in s)
             for s in balance_groups([9, 8, 7, 6, 5, 4, 3], 3)]
    assert sorted(loads) == [13, 13, 16]


def test_engine_metrics():
    even = engine_metrics([{"prompts": 2, "generated_tokens": 100, "seconds": 2.0}] * 2)
    assert even["rollout/engines"] == 2 and even["rollout/engine_balance"] == pytest.approx(1.0)
    skewed = engine_metrics([{"prompts": 3, "generated_tokens": 300, "seconds": 3.0},
                             {"prompts": 1, "generated_tokens": 100, "seconds": 1.0}])
    assert skewed["rollout/engine_balance"] == pytest.approx(1.5)
    assert skewed["rollout/engine_time_balance"] == pytest.approx(1.5)
    assert (skewed["rollout/engine_prompts_max"], skewed["rollout/engine_prompts_min"]) == (3, 1)
    assert skewed["rollout/engine_seconds_max"] == 3.0


def test_timeout_message():
    line = timeout_message("rollout engine 1", "generate", 600.0)
    assert line.startswith("rollout engine 1: generate did not answer within 600 s") and "\n" not in line


def test_hf_engine_samples_a_prompt_the_same_whatever_its_batch(tiny_model_dir):
    from rollout import SamplingSpec
    from rollout.hf_engine import HFEngine

    engine = HFEngine(tiny_model_dir, batch_size=4)
    a, b, c = [17, 42, 216, 33], [5, 6, 7], [100, 101, 102, 103, 104]
    spec = SamplingSpec(n=3, temperature=1.0, max_new_tokens=5, seed=7)
    together = engine.generate([a, b, c], spec)
    alone = engine.generate([c], spec) + engine.generate([b, a], spec)
    ids = lambda gens: [[tuple(x.token_ids) for x in g.completions] for g in gens]  # noqa: E731
    assert ids(together) == [ids(alone)[2], ids(alone)[1], ids(alone)[0]]
    other_seed = engine.generate([a], SamplingSpec(n=3, temperature=1.0, max_new_tokens=5, seed=8))
    assert ids(other_seed) != ids(together)[:1]  # the seed still matters
