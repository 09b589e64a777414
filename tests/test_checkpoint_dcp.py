"""Trainer checkpoints with torch.distributed.checkpoint (trainer/checkpoint_io.py) and their supervision.

Fast (one process, no group): a checkpoint resumes to the step an uninterrupted trainer takes (dense, MoE
with routing replay, LoRA); it holds no HF dir but `r1 export` makes one; the earlier format still loads.
Slow (Ray, gloo on CPU, real groups): saved by 2 workers (replicate, fsdp), resumed by 1 and by 3; a rank > 0
that dies during a save is reported as that rank's death at once, and the run resumes from the previous
checkpoint.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint_io import is_legacy, scheduler_state
from trainer.policy import PolicyTrainer
from trainer.settings import LoraSettings, OptimSettings, TrainerSettings

from tests.test_trainer_group import GRPO, _assert_same_update, _batch, _group, ray_cluster  # noqa: F401
from tests.test_trainer_group import _settings as _group_settings  # what _group's workers are built with

ROOT = Path(__file__).resolve().parent.parent


def _settings(**kw) -> TrainerSettings:
    """One worker's settings here: a warm-up, so a resumed schedule that restarted would show."""
    return TrainerSettings(precision="fp32", threads=1, optim=OptimSettings(lr=1e-3, warmup_steps=3), **kw)


def _step(trainer: PolicyTrainer, batch) -> None:
    trainer.train_grpo(batch, GRPO)


def _weights(trainer: PolicyTrainer) -> dict:
    return trainer.inference_state_dict()


def _write_earlier_format(trainer: PolicyTrainer, out: Path, state: dict) -> None:
    """A checkpoint as the trainer wrote them before DCP (c42c5e0's save_checkpoint for one worker): an HF
    dir, and the numbered optimizer state, scheduler, step count, LoRA parameters and RNG in one pickle."""
    trainer.save_pretrained(out / "model")
    lora = {n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad} \
        if trainer.is_lora else None
    torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": scheduler_state(trainer.scheduler.state_dict()),
                "optimizer_steps": trainer.optimizer_steps, "lora_params": lora, "torch_rng": torch.get_rng_state()},
               out / "trainer_state.pt")
    (out / "state.json").write_text(json.dumps(state))


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    return _batch(PolicyTrainer(tiny_model_dir, _settings()).batch_logprobs(_batch()))


# ---- one process (fast) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "moe-replay", "lora"])
def test_a_checkpoint_resumes_to_the_uninterrupted_step(tiny_model_dir, tiny_moe_dir, batch, tmp_path, kind):
    model = tiny_moe_dir if kind == "moe-replay" else tiny_model_dir
    settings = _settings(lora=LoraSettings(rank=4, alpha=8, targets=["q_proj", "v_proj"])) if kind == "lora" \
        else _settings()
    straight = PolicyTrainer(model, settings)
    if kind == "moe-replay":
        assert straight.replay is not None  # the routing-replay hooks are on this model
    _step(straight, batch)
    straight.save_checkpoint(tmp_path / "ckpt", {"step": 1})
    at_save = _weights(straight)
    _step(straight, batch)

    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json", "dcp", "state.json", "trainer_meta.pt"]
    assert not is_legacy(ckpt)  # no model/ dir: the stage exports one at its end, `r1 export` on request
    import torch.distributed.checkpoint as dcp

    stored = set(dcp.FileSystemReader(str(ckpt / "dcp")).read_metadata().state_dict_metadata)
    assert any(k.startswith("optimizer.state.") for k in stored)
    if kind == "lora":  # the frozen base is the model dir's: only the adapters (and their moments) are stored
        weights = [k for k in stored if k.startswith("model.")]
        assert len(weights) == 8 and all("lora_" in k for k in weights)  # 2 layers x q, v x A, B
        assert all("lora_" in k for k in stored if k.startswith("optimizer.state."))

    resumed = PolicyTrainer(model, settings)
    resumed.load_checkpoint(ckpt)
    assert resumed.optimizer_steps == 2 and resumed.scheduler.last_epoch == 2
    _step(resumed, batch)
    rel = _assert_same_update(_weights(resumed), _weights(straight), at_save, 1e-6)
    print(f"{kind}: resumed vs uninterrupted, relative difference of the updates {rel:.2e}")


def test_the_earlier_format_still_loads(tiny_model_dir, batch, tmp_path):
    straight = PolicyTrainer(tiny_model_dir, _settings())
    _step(straight, batch)
    _write_earlier_format(straight, tmp_path / "old", {"step": 1})
    at_save = _weights(straight)
    _step(straight, batch)
    assert is_legacy(tmp_path / "old")
    resumed = PolicyTrainer(tiny_model_dir, _settings())
    resumed.load_checkpoint(tmp_path / "old")
    assert resumed.optimizer_steps == 2
    _step(resumed, batch)
    _assert_same_update(_weights(resumed), _weights(straight), at_save, 1e-6)


def test_export_writes_the_checkpoints_weights_as_an_hf_dir(tiny_model_dir, batch, tmp_path):
    from safetensors.torch import load_file

    from pipeline.cli import main

    trainer = PolicyTrainer(tiny_model_dir, _settings())
    _step(trainer, batch)
    trainer.save_checkpoint(tmp_path / "ckpt", {"step": 1})
    want = load_file(trainer.save_pretrained(tmp_path / "want") + "/model.safetensors")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert any(not torch.equal(got[k], base[k]) for k in base)  # trained weights, not the model dir's
    assert (tmp_path / "out" / "tokenizer_config.json").is_file() and (tmp_path / "out" / "config.json").is_file()
    # Bad input: one line naming the file.
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2


# ---- groups on Ray (slow) ---------------------------------------------------------------------------------


def _end(group) -> None:
    """Kill the group's workers and release its placement group (the next group may be another size)."""
    from pipeline import placement

    group.kill()
    placement.release_placement()


def _load_group(tiny_model_dir, parallel: str, workers: int, ckpt: Path):
    group = _group(tiny_model_dir, parallel, workers)
    group.wait_call("load_checkpoint", str(ckpt), timeout_s=120)
    return group


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["replicate", "fsdp"])
def test_saved_by_two_workers_resumes_on_one_and_on_three(tiny_model_dir, ray_cluster, batch, tmp_path,  # noqa: F811
                                                          parallel):
    import ray

    single = PolicyTrainer(tiny_model_dir, _group_settings())
    _step(single, batch)
    at_save = _weights(single)
    _step(single, batch)
    want = _weights(single)

    group = _group(tiny_model_dir, parallel, 2)
    try:
        ray.get(group.train_grpo.remote(batch, GRPO))
        started = time.perf_counter()
        group.wait_call("save_checkpoint", str(tmp_path / "ckpt"), {"step": 1}, timeout_s=120)
        print(f"{parallel}: saved by 2 workers in {time.perf_counter() - started:.2f} s")
    finally:
        _end(group)
    files = sorted(p.name for p in (tmp_path / "ckpt" / "dcp").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its part
    sizes = [(tmp_path / "ckpt" / "dcp" / f).stat().st_size for f in files[1:]]
    assert min(sizes) > 0.2 * max(sizes), sizes  # in parallel: neither rank wrote (nearly) all of it

    one = PolicyTrainer(tiny_model_dir, _group_settings())
    one.load_checkpoint(tmp_path / "ckpt")
    assert one.optimizer_steps == 2
    _step(one, batch)
    print(parallel, "2 -> 1:", _assert_same_update(_weights(one), want, at_save, 1e-4))

    three = _load_group(tiny_model_dir, parallel, 3, tmp_path / "ckpt")
    try:
        ray.get(three.train_grpo.remote(batch, GRPO))
        three.check()
        got = ray.get(three.inference_state_dict.remote())
        steps = ray.get([w.__ray_call__.remote(lambda t: t.optimizer_steps) for w in three.workers])
    finally:
        _end(three)
    assert steps == [4, 4, 4]
    print(parallel, "2 -> 3:", _assert_same_update(got, want, at_save, 1e-4))


@pytest.mark.slow
# FSDP2 over one worker: its parameters are DTensors, so the numbered optimizer state must go through
# set_optimizer_state_dict as for two (plain load_state_dict made the next step fail on mixed Tensor/DTensor).
@pytest.mark.parametrize("parallel, workers", [("replicate", 2), ("fsdp", 2), ("fsdp", 1)])
def test_the_earlier_format_loads_into_a_group(tiny_model_dir, ray_cluster, batch, tmp_path, parallel,  # noqa: F811
                                               workers):
    import ray

    single = PolicyTrainer(tiny_model_dir, _group_settings())
    _step(single, batch)
    _write_earlier_format(single, tmp_path / "old", {"step": 1})
    at_save = _weights(single)
    _step(single, batch)
    group = _load_group(tiny_model_dir, parallel, workers, tmp_path / "old")
    try:
        ray.get(group.train_grpo.remote(batch, GRPO))
        group.check()
        got = ray.get(group.inference_state_dict.remote())
    finally:
        _end(group)
    print(parallel, f"earlier format -> {workers}:", _assert_same_update(got, _weights(single), at_save, 1e-4))


@pytest.mark.slow
def test_a_rank_that_dies_during_a_save_is_named_and_the_run_resumes_from_the_previous_checkpoint(
        tiny_model_dir, ray_cluster, batch, tmp_path):  # noqa: F811
    import ray

    from stages.checkpoints import latest_checkpoint, resume, save_step
    from stages.supervision import TrainerDied

    def die_writing(trainer):  # (local: Ray pickles it by value into the worker)
        """Make this worker die (os._exit, as a crash or an OOM kill) in the middle of its next DCP save:
        after the plan's collectives, when it should write its shards."""
        import os

        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        def write_data(self, plan, planner):
            os._exit(1)
        FileSystemWriter.write_data = write_data
        return trainer.rank

    single = PolicyTrainer(tiny_model_dir, _group_settings())
    _step(single, batch)
    at_save = _weights(single)
    _step(single, batch)
    want = _weights(single)

    group = _group(tiny_model_dir, "fsdp", 2)
    try:
        ray.get(group.train_grpo.remote(batch, GRPO))
        save_step(group, tmp_path, 1, {"data_position": 7}, keep=2, timeout_s=120)
        ray.get(group.train_grpo.remote(batch, GRPO))
        assert ray.get(group.workers[1].__ray_call__.remote(die_writing)) == 1
        started = time.perf_counter()
        with pytest.raises(TrainerDied, match=r"trainer rank 1 \(of 2\) died during save_checkpoint"):
            save_step(group, tmp_path, 2, {"data_position": 14}, keep=2, timeout_s=120)
        waited = time.perf_counter() - started
    finally:
        _end(group)
    print(f"rank 1 died during the save: reported after {waited:.1f} s (timeout 120 s)")
    assert waited < 30
    ckpt, state = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_00001" and state == {"step": 1, "data_position": 7}
    assert not (tmp_path / "checkpoints" / "step_00002").exists()

    class Logger:
        def truncate_after(self, step):
            return 0

    again = _group(tiny_model_dir, "fsdp", 2)
    try:
        assert resume(again, tmp_path, Logger(), "test", timeout_s=120) == (1, state)
        ray.get(again.train_grpo.remote(batch, GRPO))
        again.check()
        got = ray.get(again.inference_state_dict.remote())
    finally:
        _end(again)
    print("resumed after the failed save:", _assert_same_update(got, want, at_save, 1e-4))
    np.testing.assert_array_equal(sorted(got), sorted(want))
