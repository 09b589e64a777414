"""Under FSDP2 (two gloo ranks) the parameter-by-parameter export gathers each DTensor whole on every rank and
gives what one unsharded trainer gives, in fp32 and (cast on the shards before the gather) in bf16."""
import multiprocessing
import pickle

import pytest
import torch

pytestmark = pytest.mark.slow


def _rank(rank, port, model_dir, queue):
    import torch

    torch.set_num_threads(1)
    from trainer.policy import PolicyTrainer
    from trainer.settings import TrainerSettings
    from trainer.weight_export import iter_inference_tensors

    trainer = PolicyTrainer(model_dir, TrainerSettings(precision="fp32", threads=1))
    trainer.join_group(f"tcp://127.0.0.1:{port}", rank, 2, "fsdp", 120.0, "gloo")
    sharded = any(hasattr(p, "full_tensor") for p in trainer.model.parameters())
    fp32 = {n: t.clone() for n, t in iter_inference_tensors(trainer)}
    bf16 = {n: t.clone() for n, t in iter_inference_tensors(trainer, torch.bfloat16)}
    queue.put(pickle.dumps((rank, sharded, fp32, bf16)))  # by value: this process may exit first


def test_every_rank_gets_the_unsharded_weights(tiny_model_dir):
    from tests.legacy_weight_export import legacy_inference_tensors
    from tests.ray_cluster import free_port
    from trainer.policy import PolicyTrainer
    from trainer.settings import TrainerSettings

    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, tiny_model_dir, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        answers = sorted((pickle.loads(queue.get(timeout=300)) for _ in procs), key=lambda a: a[0])
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    expected = legacy_inference_tensors(PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32")))
    for rank, sharded, fp32, bf16 in answers:
        assert sharded, "the model was not sharded: the test would not exercise the gathers"
        assert fp32.keys() == bf16.keys() == expected.keys(), rank
        for name, tensor in expected.items():
            assert torch.equal(fp32[name], tensor), (rank, name)
            assert bf16[name].dtype == torch.bfloat16 and torch.equal(bf16[name], tensor.to(torch.bfloat16)), name
