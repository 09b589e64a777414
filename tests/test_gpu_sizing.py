"""bench/gpu_sizing.py: the estimates docs/cluster.md quotes come from the models' real shapes, and the JSON
beside the doc is what the script computes now."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_sizing():
    spec = importlib.util.spec_from_file_location("gpu_sizing", ROOT / "bench" / "gpu_sizing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_counts_match_the_published_models():
    sizing = load_sizing()
    # Qwen2.5-Math-7B: 7,615,616,512 parameters (untied head); Qwen2.5-1.5B-Instruct: 1,543,714,304 (tied).
    assert sizing.params(sizing.SHAPES["Qwen/Qwen2.5-Math-7B"]) == 7_615_616_512
    assert sizing.params(sizing.SHAPES["Qwen/Qwen2.5-1.5B-Instruct"]) == 1_543_714_304


def test_fsdp_shards_the_optimizer_state_and_the_sync_carries_bf16():
    sizing = load_sizing()
    s = sizing.SHAPES["Qwen/Qwen2.5-Math-7B"]
    one, eight = sizing.trainer_gpu(s, 1, 2, 4096), sizing.trainer_gpu(s, 8, 2, 4096)
    assert abs(eight["AdamW moments (fp32)"] * 8 - one["AdamW moments (fp32)"]) < 1e-9
    sync = sizing.sync(s, 8, 4, 2, 256, colocated=False)
    assert sync["after: host RAM used"] == 0
    assert abs(sync["after: bf16 bytes per engine worker (broadcast from rank 0, or IPC on the same GPU)"] * 2
               - sync["before: fp32 state dict gathered into rank 0's host RAM (FSDP)"]) < 1e-9


def test_the_json_beside_the_doc_is_current():
    assert json.loads((ROOT / "docs" / "cluster" / "gpu_sizing.json").read_text()) == load_sizing().sizing()
