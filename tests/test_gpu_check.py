"""bench/gpu_check.py on CPU (gloo, shared memory for the IPC handles): every phase but CUDA, without vLLM and
Ray (the GPU check machine has neither), with and without transformers, and a broken checkpoint load caught."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"

# Runs the script with some packages made unimportable, as on a machine that has torch alone.
BLOCKED_RUN = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not installed here (blocked by the test)")
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[2], *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_blocked(blocked: str, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([sys.executable, "-c", BLOCKED_RUN, blocked, str(SCRIPT), "--device", "cpu", "--out",
                           str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    return done, json.loads(out.read_text())


def check_common(result: dict, model: str) -> None:
    phases = result["phases"]
    assert result["ok"] and not result["failed"], {k: v.get("error") for k, v in phases.items()}
    assert list(phases) == ["group", "metrics", "shard", "step", "dcp", "gather", "ipc", "offload"]
    assert "gloo" in phases["group"]["backend"] and "nccl" not in phases["group"]["backend"]
    assert phases["metrics"]["metrics_cpu_tensor_ok"] and phases["metrics"]["metrics_device_tensor_ok"]
    shard = phases["shard"]
    assert shard["model"] == model and shard["master_dtype"] == "torch.float32"
    assert "param_dtype=torch.bfloat16" in shard["mixed_precision"] and "reduce_dtype=torch.float32" in shard["mixed_precision"]
    assert phases["step"]["logits_dtype"] == "torch.bfloat16" and len(phases["step"]["losses"]) == 3
    dcp = phases["dcp"]
    assert dcp["weights_max_diff"] == 0 and dcp["moments_max_diff"] == 0
    assert "dcp/.metadata" in dcp["files"] and any(f.endswith(".distcp") for f in dcp["files"])
    gather = phases["gather"]
    # bf16 on the wire: two bytes per parameter, every parameter compared with the trainer's weights.
    assert gather["bytes"] == 2 * shard["parameters"] and gather["max_diff_vs_bf16_weights"] == 0
    assert gather["compared"] == gather["tensors"] == shard["sharded_parameters"] > 0  # every parameter a DTensor
    # The colocated sync: another process opened the shared buckets and saw every tensor's bits.
    ipc = phases["ipc"]
    assert ipc["tensors"] == gather["tensors"] and ipc["bytes"] == gather["bytes"] and ipc["receiver_rc"] == 0
    assert phases["offload"]["offloaded"] is False and phases["offload"]["weights_max_diff"] == 0  # CPU: no-op
    assert result["imported"]["vllm"] is False and result["imported"]["ray"] is False
    env = result["environment"]
    assert env["torch"] and "commit" in env and result["settings"]["device"] == "cpu"


def test_gpu_check_runs_on_gloo_without_vllm_and_ray(tmp_path):
    done, result = run_blocked("vllm,ray", tmp_path / "gpu_check.json")
    assert done.returncode == 0, done.stderr[-2000:]
    check_common(result, "transformers-qwen2")
    assert result["phases"]["gather"]["api"] == "trainer.weight_export.iter_inference_tensors"
    assert result["phases"]["dcp"]["api"].startswith("trainer.checkpoint_io")
    assert "gpu_check gather: ok" in done.stdout


def test_gpu_check_runs_without_transformers(tmp_path):
    done, result = run_blocked("vllm,ray,transformers", tmp_path / "gpu_check.json", "--bucket-mb", "0.05")
    assert done.returncode == 0, done.stderr[-2000:]
    check_common(result, "plain-torch")
    assert result["phases"]["ipc"]["buckets"] > 3  # several buckets, each read before the next is packed
    assert result["imported"]["transformers"] is False
    assert result["phases"]["gather"]["api"].startswith("per-parameter")


def test_a_checkpoint_load_that_restores_nothing_fails_the_check(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    from trainer import checkpoint_io

    monkeypatch.setattr(checkpoint_io, "load_checkpoint", lambda trainer, folder: None)
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--model", "plain", "--steps", "1", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["failed"] == ["dcp"] and "DCP round trip changed the state" in result["phases"]["dcp"]["error"]
    assert result["phases"]["gather"]["ok"]  # the later phases still ran
