"""The SFT stage loop on a real Ray trainer actor (a tiny model): checkpoints, and a resume after a kill that
ends with the same weights as a run that was never interrupted."""
import json

import pytest
import ray
import torch
from safetensors.torch import load_file

from pipeline.tracking import MetricsLogger, read_metrics
from stages.sft import SFTPlan, sft_loop
from trainer.policy import PolicyTrainer
from trainer.settings import OptimSettings, TrainerSettings

PAIRS = [([5 + i, 6, 7], [20 + i, 21, 22, 23]) for i in range(12)]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _run(model_dir, out_dir, steps_done_before_kill=None):
    settings = TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2), threads=1)
    trainer = ray.remote(PolicyTrainer).remote(model_dir, settings)
    plan = SFTPlan(pairs=PAIRS, epochs=2.0, batch_size=4, micro_batch_size=4, seed=0, out_dir=out_dir, save_every=2)
    logger = MetricsLogger(out_dir, tensorboard=False)
    try:
        return sft_loop(trainer, plan, logger)
    finally:
        logger.close()
        ray.kill(trainer)


def test_sft_resumes_from_its_checkpoint_to_the_same_weights(tiny_model_dir, tmp_path, ray_local):
    straight = _run(tiny_model_dir, tmp_path / "straight")
    assert straight["steps"] == 6
    assert [r["step"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]

    # The same run killed after step 5: it left checkpoints at steps 2 and 4 (keep 1: only step 4) and
    # metric lines up to 5, and no model.
    killed = tmp_path / "killed"
    _run(tiny_model_dir, killed)
    (killed / "manifest.json").unlink()
    import shutil

    shutil.rmtree(killed / "model")
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")
    assert json.loads((killed / "checkpoints" / "step_00004" / "state.json").read_text())["step"] == 4
    resumed = _run(tiny_model_dir, killed)
    assert [r["step"] for r in read_metrics(killed / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]  # 5 redone once
    a = load_file(f"{straight['model']}/model.safetensors")
    b = load_file(f"{resumed['model']}/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
