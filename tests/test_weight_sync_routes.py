"""Which sync route a layout gets (pipeline/weight_sync.py), the trainer's offload around colocated engines
(trainer/offload.py, stages/grpo.py), and whose death a RayActorError reports (stages/grpo.py)."""
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.weight_sync import weight_sync_mode

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("config, mode", [("gpu/qwen2.5-1.5b-instruct.yaml", "ipc"),  # colocated on one GPU
                                          ("gpu/qwen2.5-math-7b.yaml", "broadcast"),  # engines on their own GPUs
                                          ("gpu/qwen2.5-math-7b-2x8.yaml", "broadcast"),
                                          ("quickstart.yaml", "object_store")])  # CPU
def test_each_shipped_layout_gets_its_route(config, mode):
    assert weight_sync_mode(load_config(CONFIGS / config, ["cluster.weight_sync=auto"])) == mode  # from the layout
    assert weight_sync_mode(load_config(CONFIGS / config)) == mode  # and as the config file says


def test_a_route_the_layout_cannot_run_is_refused_in_one_line():
    colocated = load_config(CONFIGS / "gpu/qwen2.5-1.5b-instruct.yaml", ["cluster.weight_sync=broadcast"])
    with pytest.raises(ValueError, match="^cluster.weight_sync=broadcast with the engines colocated.*use ipc") as err:
        weight_sync_mode(colocated)
    assert "\n" not in str(err.value)
    split = load_config(CONFIGS / "gpu/qwen2.5-math-7b.yaml", ["cluster.weight_sync=ipc"])
    with pytest.raises(ValueError, match="^cluster.weight_sync=ipc needs the engines on the trainer's GPUs"):
        weight_sync_mode(split)
    cpu = load_config(CONFIGS / "quickstart.yaml", ["cluster.weight_sync=broadcast"])
    assert weight_sync_mode(cpu) == "broadcast"  # gloo between CPU processes: allowed (tests use it)


class _Actors:
    """The RL loop's view of the actors, recording the order of what it asks."""

    def __init__(self, colocated: bool):
        self.sleep_engines, self.reference, self.reference_is_trainer = colocated, None, False
        self.calls = []
        actors = self

        class Rollout:
            def sleep(self):
                actors.calls.append("engines sleep")

        self.rollout = Rollout()

    def call_trainer(self, method, *args):
        self.calls.append(method)
        return {}

    def sync_weights(self):
        self.calls.append("sync_weights")
        return 0.0


@pytest.mark.parametrize("colocated", [True, False])
def test_a_colocated_trainer_holds_the_gpu_only_between_the_engines_sleep_and_the_sync(monkeypatch, colocated):
    from types import SimpleNamespace

    import stages.grpo as grpo

    stats = {"time/generate": 0.0, "time/reward": 0.0}
    monkeypatch.setattr(grpo, "collect_rollouts", lambda *a: (None, [], [], dict(stats)))
    monkeypatch.setattr(grpo, "build_batch", lambda *a: "batch")
    monkeypatch.setattr(grpo, "grpo_step_tokens", lambda *a, **k: {})
    monkeypatch.setattr(grpo, "step_metrics", lambda *a: {})
    actors = _Actors(colocated)
    plan = SimpleNamespace(grpo=SimpleNamespace(temperature=1.0, micro_batch_size=2, routing_replay_reference=False))
    grpo.rl_step(actors, SimpleNamespace(epoch=0), plan, 1)
    if colocated:
        assert actors.calls == ["engines sleep", "reload_states", "train_grpo", "sync_weights", "offload_states"]
    else:
        assert actors.calls == ["train_grpo", "sync_weights"]


def test_offload_on_cpu_is_a_no_op_that_keeps_the_state(tiny_model_dir):
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
    trainer.train_sft([[1, 2, 3]], [[4, 5]])
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    moments = {k: v.clone() for s in trainer.optimizer.state.values() for k, v in s.items() if k == "exp_avg_sq"}
    assert trainer.offload_states() is False and trainer.reload_states() is False  # nothing to give on CPU
    assert all(torch.equal(p, weights[n]) for n, p in trainer.model.named_parameters())
    assert all(p.device.type == "cpu" for p in trainer.model.parameters())
    assert len(moments) == 1 and trainer.optimizer.state  # AdamW state kept
    trainer.train_sft([[1, 2, 3]], [[4, 5]])  # and training goes on


def test_offload_moves_weights_and_adam_state_and_reload_brings_them_back(tiny_model_dir, monkeypatch):
    """The GPU path's moves, with the trainer's device standing in for a GPU (CPU ↔ CPU; the CUDA calls off)."""
    import trainer.offload as offload
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
    trainer.train_sft([[1, 2, 3]], [[4, 5]])
    moved = []
    monkeypatch.setattr(offload, "_gpu", lambda t: True)
    monkeypatch.setattr(offload.torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(offload.torch.cuda, "empty_cache", lambda: moved.append("empty_cache"))
    monkeypatch.setattr(offload, "_move_optimizer", lambda opt, device: moved.append(("optimizer", str(device))))
    to = trainer.model.to
    monkeypatch.setattr(trainer.model, "to", lambda device: moved.append(("model", str(device))) or to(device))
    assert trainer.offload_states() is True and trainer.offload_states() is False  # once
    assert trainer.reload_states() is True and trainer.reload_states() is False
    assert moved == [("model", "cpu"), ("optimizer", "cpu"), "empty_cache", ("model", str(trainer.device)),
                     ("optimizer", str(trainer.device))]


def test_only_the_trainers_own_death_restarts_it():
    from ray.exceptions import RayActorError

    from stages.grpo import trainer_died
    from stages.supervision import TrainerDied

    class Handle:
        def __init__(self, ident):
            self._actor_id = bytes.fromhex(ident)

    class Group:
        workers = [Handle("aa" * 16), Handle("bb" * 16)]

    def error(ident):
        exc = RayActorError()
        exc.actor_id = ident
        return exc

    assert trainer_died(TrainerDied("x"), Group())
    assert trainer_died(error("bb" * 16), Group())  # a worker of the group
    assert trainer_died(error(None), Group())  # Ray could not say whose: the trainer's call, so the trainer
    assert not trainer_died(error("cc" * 16), Group())  # an engine's death that reached the loop
    assert not trainer_died(error("cc" * 16), Handle("aa" * 16))
