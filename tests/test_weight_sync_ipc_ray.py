"""The colocated route's driver (pipeline/weight_sync.py IPCSync) with real Ray actors on CPU: a real trainer
shares bf16 buckets by handle (shared memory here, CUDA IPC on GPUs), two engine actors load them through
the vLLM worker extension's method; an engine killed in the middle of a sync is replaced and synced, and the
same trainer actor carries on."""
import pytest
import torch

from tests.ipc_fakes import FakeIPCEngine

pytestmark = pytest.mark.slow


def test_ipc_sync_reaches_every_engine_and_survives_an_engine_killed_mid_sync(ray_repo, tiny_model_dir, tmp_path):
    import ray

    from pipeline.cluster import RLActors
    from pipeline.faults import parse_faults, with_faults
    from pipeline.weight_sync import IPCSync
    from stages.rollout_pool import supervised_pool
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    engine_cls = ray.remote(with_faults(FakeIPCEngine, "rollout", parse_faults(["rollout:receive_ipc:3:kill"]),
                                        tmp_path / "faults"))
    pool = supervised_pool(lambda index, model: engine_cls.options(num_cpus=0).remote(), 2, model_dir=tiny_model_dir,
                           timeout_s=120, max_restarts=1)
    trainer = ray.remote(PolicyTrainer).options(num_cpus=0).remote(
        tiny_model_dir, TrainerSettings(precision="fp32", threads=1, optim=OptimSettings(lr=1e-2)))
    actors = RLActors(rollout=pool, trainer=trainer, timeout_s=120, max_restarts=1)
    actors.broadcast = pool.broadcast = route = IPCSync(actors, bucket_mb=0.5)

    route.sync()  # buckets 1 and 2 of the first sync: the kill fires at bucket 3, on one of the two engines
    assert [p.name for p in (tmp_path / "faults").iterdir()] == ["rollout_receive_ipc_3_kill"]
    assert pool.group.members[0].role.restarts == 1  # one engine replaced ...
    expected = {n: t.to(torch.bfloat16) for n, t in ray.get(trainer.inference_tensors.remote()).items()}
    for handle in pool.handles:  # ... and every engine, the new one too, holds the trainer's weights
        loaded = ray.get(handle.loaded.remote())
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[n], expected[n]) for n in expected)
    ray.get(trainer.__ray_ready__.remote(), timeout=60)  # the same trainer actor, alive and kept
    assert actors.trainer is trainer and actors.trainer_restarts == 0

    ray.get(trainer.train_sft.remote([[1, 2, 3]], [[4, 5]]))  # the trainer moves on; the next sync follows it
    route.sync()
    moved = {n: t.to(torch.bfloat16) for n, t in ray.get(trainer.inference_tensors.remote()).items()}
    assert any(not torch.equal(moved[n], expected[n]) for n in moved)
    for handle in pool.handles:
        loaded = ray.get(handle.loaded.remote())
        assert all(torch.equal(loaded[n], moved[n]) for n in moved)
