"""Memory per GPU and bytes per weight sync of the GPU configs, estimated from the models' shapes.

    python bench/gpu_sizing.py [--out docs/cluster/gpu_sizing.json]

Every figure here is an ESTIMATE (arithmetic on shapes, no GPU run); docs/cluster.md quotes them as such, and
bench/gpu_check.py measures what one GPU can. The paths sized are those of issue 24: FSDP2 with bf16
parameters and all-gathers and fp32 master weights, gradients, reduction and AdamW; the sync gathered one
parameter at a time in bf16 (NCCL broadcast to engines on other GPUs, CUDA IPC to engines on the same GPU);
DCP checkpoints written by every rank. The "before" columns are the paths the issue replaced (fp32 state dict
gathered into rank 0's RAM every step; one pickle of the whole state written by rank 0).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9

# The models' config.json figures (no download needed).
SHAPES = {
    "Qwen/Qwen2.5-Math-7B": {"hidden": 3584, "layers": 28, "heads": 28, "kv_heads": 4, "head_dim": 128,
                             "intermediate": 18944, "vocab": 152064, "tied": False},
    "Qwen/Qwen2.5-1.5B-Instruct": {"hidden": 1536, "layers": 28, "heads": 12, "kv_heads": 2, "head_dim": 128,
                                   "intermediate": 8960, "vocab": 151936, "tied": True},
}
CHUNK_BYTES = 3 * 2**27  # fp32 logit chunks of trainer.sequences.token_logprobs (128 MiB each, ~3 alive)
ENGINE_OVERHEAD_GB = 2.0  # vLLM's activations, CUDA graphs and context per GPU (a common observation, estimate)


def layer_params(s: dict) -> int:
    """Parameters of one decoder layer (Qwen2: biases on q, k, v)."""
    h, kv = s["hidden"], s["kv_heads"] * s["head_dim"]
    attention = h * h + h + 2 * (h * kv + kv) + h * h  # q (bias), k and v (bias), o
    return attention + 3 * h * s["intermediate"] + 2 * h  # gate, up, down; two RMSNorms


def root_params(s: dict) -> int:
    """Embedding, final norm and (untied) head: what FSDP2's root module holds."""
    return s["vocab"] * s["hidden"] * (1 if s["tied"] else 2) + s["hidden"]


def params(s: dict) -> int:
    """All parameters of the model."""
    return s["layers"] * layer_params(s) + root_params(s)


def trainer_gpu(s: dict, workers: int, rows: int, tokens: int) -> dict:
    """Peak bytes on one trainer GPU in an update (FSDP2 over ``workers``; 1 = no sharding)."""
    p, layer, root = params(s), layer_params(s), root_params(s)
    out = {"fp32 master weights": 4 * p / workers, "fp32 gradients": 4 * p / workers,
           "AdamW moments (fp32)": 8 * p / workers}
    if workers > 1:
        out["bf16 layers gathered (this one and the prefetched next)"] = 2 * 2 * layer
        out["a layer's gradient before its reduce-scatter (bf16, then fp32)"] = 6 * layer
        # The root is not resharded after forward (FSDP2 keeps it for backward); its gradient lives all backward.
        out["root (embedding + head) gathered in bf16, and its gradient"] = 2 * root + 6 * root
    else:
        out["bf16 autocast copies of one layer's weights"] = 2 * layer
    n = rows * tokens
    out["checkpointed layer inputs (bf16)"] = n * s["hidden"] * 2 * s["layers"]
    out["one layer recomputed in backward (bf16)"] = n * (3 * s["intermediate"] + 6 * s["hidden"]) * 2
    out["logits (bf16) and their gradient"] = 2 * n * s["vocab"] * 2
    out["fp32 logit chunks"] = CHUNK_BYTES
    out["total"] = sum(out.values())
    return {k: v / GB for k, v in out.items()}


def engine(s: dict, tp: int, gpu_gb: float, utilization: float) -> dict:
    """One vLLM engine over ``tp`` GPUs: weights per GPU, KV cache and the tokens it holds."""
    weights = 2 * params(s) / tp
    kv_per_token = s["layers"] * 2 * s["kv_heads"] * s["head_dim"] * 2  # K and V, bf16, whole engine
    kv = tp * (utilization * gpu_gb * GB - weights - ENGINE_OVERHEAD_GB * GB)
    return {"bf16 weights per GPU": weights / GB, "KV cache per engine": kv / GB,
            "KV bytes per token": kv_per_token, "tokens cached": kv / kv_per_token}


def sync(s: dict, workers: int, engines: int, tp: int, bucket_mb: float, colocated: bool) -> dict:
    """Bytes of one weight sync, before (the paths issue 24 replaced) and after (bf16, one parameter at a time)."""
    p = params(s)
    largest = s["vocab"] * s["hidden"] * 2
    out = {}
    if colocated:  # NCCL refuses two ranks on one GPU: the old route never ran
        out["before: NCCL broadcast to the engine on the same GPU"] = "refused by NCCL (no figure)"
    else:
        out["before: fp32 state dict gathered into rank 0's host RAM (FSDP)"] = 4 * p / GB
    out.update({
        "after: host RAM used": 0.0,
        "after: bf16 bytes per engine worker (broadcast from rank 0, or IPC on the same GPU)": 2 * p / GB,
        "after: bf16 bytes each FSDP rank receives in the per-parameter gathers": 2 * p * (workers - 1) / workers / GB,
        "after: GPU memory the sync adds (largest whole parameter + one bucket)": (largest + bucket_mb * 2**20) / GB,
        "engine workers receiving": engines * tp,
        "object store route (CPU only), for scale: fp32 per engine": 4 * p / GB,
    })
    return out


def checkpoint(s: dict, workers: int) -> dict:
    """GB of a trainer checkpoint, whole and per DCP rank, and of the HF export."""
    p = params(s)
    return {"weights + AdamW (fp32)": 12 * p / GB, "written per rank (DCP)": 12 * p / workers / GB,
            "before: gathered into rank 0's RAM and written by it alone": 12 * p / GB,
            "HF export at stage end (bf16)": 2 * p / GB}


# The configs of configs/gpu/: (model, trainer workers, micro-batch rows, tokens per row, engines, TP, GPU GB,
# vLLM utilisation, sync bucket MB: 512 for IPC, 256 for the broadcast, as in trainer/weight_sync_send.py).
LAYOUTS = {
    "qwen2.5-1.5b-instruct (1 GPU, colocated, IPC)": ("Qwen/Qwen2.5-1.5B-Instruct", 1, 4, 2048, 1, 1, 80, 0.35, 512),
    "qwen2.5-math-7b (1 node x 8, split 4 + 4, broadcast)": ("Qwen/Qwen2.5-Math-7B", 4, 2, 4096, 4, 1, 80, 0.85, 256),
    "qwen2.5-math-7b-2x8 (2 nodes x 8, split, broadcast)": ("Qwen/Qwen2.5-Math-7B", 8, 2, 4096, 4, 2, 80, 0.85, 256),
}


def sizing() -> dict:
    """Every layout's figures (what ``--out`` gets)."""
    out = {"note": "estimates from the models' shapes (bench/gpu_sizing.py), not measurements", "layouts": {}}
    for name, (model, workers, rows, tokens, engines, tp, gpu_gb, util, bucket) in LAYOUTS.items():
        s = SHAPES[model]
        out["layouts"][name] = {
            "model": model, "parameters": params(s), "trainer_workers": workers,
            "micro_batch": f"{rows} rows x {tokens} tokens", "trainer_gpu_gb": trainer_gpu(s, workers, rows, tokens),
            "engine_gb": engine(s, tp, gpu_gb, util),
            "sync_gb": sync(s, workers, engines, tp, bucket, colocated="colocated" in name),
            "checkpoint_gb": checkpoint(s, workers)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "cluster" / "gpu_sizing.json"))
    args = p.parse_args(argv)
    result = sizing()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, layout in result["layouts"].items():
        print(f"{name}: {layout['parameters'] / 1e9:.2f} B parameters")
        for section in ("trainer_gpu_gb", "engine_gb", "sync_gb", "checkpoint_gb"):
            for k, v in layout[section].items():
                print(f"  {section:15s} {k}: {v:.3g}" if isinstance(v, float) else f"  {section:15s} {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
