"""Memory and bytes of one weight sync, before and after issue 24: measured on CPU for SmolLM2-135M, estimated
for Qwen2.5-7B's shapes.

Measured (CPU, gloo, the GPU routes' code): trainer ranks 0 and 1 of an FSDP2 group (``fsdp``; also ``replicate``
at one rank), and a third process as the engine receiving the broadcast.

- before: the state dict gathered whole into rank 0's host RAM (``get_model_state_dict(full_state_dict=True,
  cpu_offload=True)``, tests/legacy_weight_export.py) then sent bucket by bucket (``WeightGroup.send``);
- after: one parameter gathered at a time, cast to bf16 on its shard, copied into the bucket being sent
  (``trainer.weight_sync_send.broadcast_weights``); and the colocated route, IPC buckets (handles only).

"Peak extra" is rank 0's resident memory above what it held before the sync, sampled every millisecond (glibc's
mmap threshold pinned at 64 KiB so freed tensors leave the resident set at once). The 7B figures are computed
from the parameter shapes (a meta-device Qwen2 with Qwen2.5-7B's config), with the same formulas that the
"model" columns give for SmolLM2, so the two can be compared. Writes docs/cluster/weight_sync.json.

    python bench/weight_sync_memory.py [--out docs/cluster/weight_sync.json] [--bucket-mb 256]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # children inherit it; set before they start

MB = 2**20
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set above the level at entry, sampled by a thread."""

    def __enter__(self):
        import gc

        gc.collect()
        self.base = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


def _member(rank: int, world: int, trainer_port: int, weight_port: int, model_dir: str, parallel: str,
            bucket_mb: float, specs_queue, results) -> None:
    """Rank ``world`` is the engine; ranks below it are the trainer group."""
    import torch

    torch.set_num_threads(1)
    from rollout.weight_broadcast import WeightGroup, tensor_specs

    if rank == world:  # the engine: receive each sync, count what arrives
        group = WeightGroup("127.0.0.1", weight_port, 1, 2, backend="gloo", timeout_s=600)
        got = {}
        for mode in ("after", "before"):
            specs = specs_queue.get()
            got[mode] = {n: t.clone() for n, t in group.receive(specs, torch.bfloat16, bucket_mb)}
            results.put(("engine", mode, sum(t.numel() * t.element_size() for t in got[mode].values())))
        # The engine got the same weights both ways (names and bf16 values), only the order differs.
        same = got["after"].keys() == got["before"].keys() and all(torch.equal(t, got["before"][n])
                                                                   for n, t in got["after"].items())
        results.put(("engine", "same_weights_both_ways", same))
        return

    from tests.legacy_weight_export import legacy_inference_tensors
    from trainer.policy import PolicyTrainer
    from trainer.settings import TrainerSettings
    from trainer.weight_export import weight_specs
    from trainer.weight_sync_send import broadcast_weights, next_ipc_bucket, open_ipc_export

    trainer = PolicyTrainer(model_dir, TrainerSettings(precision="fp32", threads=1))
    if world > 1:
        trainer.join_group(f"tcp://127.0.0.1:{trainer_port}", rank, world, parallel, 600.0, "gloo")
    if rank == 0:
        trainer.open_weight_group("127.0.0.1", weight_port, 2, "gloo", 600.0)
    # Read every weight once: a model loaded from safetensors may still be file-backed pages that the first
    # sync would fault in, and count as that sync's memory.
    float(sum(p.detach().to_local().sum() if hasattr(p, "to_local") else p.detach().sum()
              for p in trainer.model.parameters()))
    figures = {}

    # after: parameter by parameter
    specs = weight_specs(trainer)
    if rank == 0:
        specs_queue.put(specs)
    with PeakRSS() as after:
        sent = broadcast_weights(trainer, "bfloat16", specs, bucket_mb)
    figures["after"] = {"peak_extra_bytes": after.extra, "bytes_per_engine": sent}

    # before: the whole state dict in host RAM, then bucketed sends
    with PeakRSS() as before:
        tensors = legacy_inference_tensors(trainer)
        sent = 0
        if rank == 0:
            specs_queue.put(tensor_specs(tensors))
            sent = trainer._weight_group.send(tensors, torch.bfloat16, bucket_mb)
    del tensors
    figures["before"] = {"peak_extra_bytes": before.extra, "bytes_per_engine": sent}

    # the colocated route: IPC buckets (on CPU: shared memory; the handles are what an engine is sent)
    import pickle

    handle_bytes = 0
    with PeakRSS() as ipc:
        open_ipc_export(trainer, "bfloat16", specs, bucket_mb)
        while (bucket := next_ipc_bucket(trainer)) is not None:
            handle_bytes += len(pickle.dumps(bucket))
    figures["ipc"] = {"peak_extra_bytes": ipc.extra, "bytes_per_engine": handle_bytes}
    if rank == 0:
        results.put(("trainer", None, figures))


def measure(model_dir: str, parallel: str, world: int, bucket_mb: float) -> dict:
    """One run of the three syncs at ``world`` trainer ranks (+ the engine); rank 0's figures."""
    import multiprocessing

    from tests.ray_cluster import free_port

    ctx = multiprocessing.get_context("spawn")
    specs_queue, results = ctx.Queue(), ctx.Queue()
    weight_port, trainer_port = free_port(), free_port()
    procs = [ctx.Process(target=_member, args=(r, world, trainer_port, weight_port, model_dir, parallel, bucket_mb,
                                               specs_queue, results)) for r in range(world + 1)]
    for p in procs:
        p.start()
    got, engine = None, {}
    try:
        for _ in range(4):
            who, mode, value = results.get(timeout=900)
            if who == "trainer":
                got = value
            else:
                engine[mode] = value
    finally:
        for p in procs:
            p.join(timeout=120)
            if p.is_alive():
                p.kill()
    got["engine_received_the_same_weights_both_ways"] = engine.pop("same_weights_both_ways")
    for mode, received in engine.items():
        got[mode]["bytes_received_by_engine"] = received
    return got


def model_figures(shapes: list[tuple[str, tuple[int, ...]]], bucket_mb: float, world: int) -> dict:
    """Bytes from the parameter shapes alone (what "estimate" means in the results): per engine and the
    trainer's peak extra memory, host RAM and device, before and after."""
    import math

    import torch

    from rollout.weight_broadcast import bucket_plan

    sizes = {n: math.prod(s) for n, s in shapes}
    numel = list(sizes.values())
    total = sum(numel)
    bf16 = 2
    buckets = bucket_plan(shapes, torch.bfloat16, bucket_mb)
    # after: a multi-tensor bucket's flat buffer + the one tensor being copied in; a lone tensor: itself
    after = max((sum(sizes[n] for n, _ in b) + max(sizes[n] for n, _ in b)) * bf16 if len(b) > 1
                else sizes[b[0][0]] * bf16 for b in buckets)
    # before: the fp32 state dict in rank 0's host RAM (under FSDP), and on the device each bucket's bf16 copies
    # and their concatenation
    largest_bucket = max(sum(sizes[n] for n, _ in b) for b in buckets) * bf16
    return {"params": total, "largest_param": max(numel),
            "bytes_per_engine": {"object_store_fp32": total * 4, "broadcast_bf16": total * bf16,
                                 "ipc": "handles only (~1 KiB per bucket); the engine reads the bf16 bucket on the GPU"},
            "before": {"host_ram_peak_extra": total * 4 if world > 1 else 0, "device_peak_extra": 2 * largest_bucket},
            "after": {"host_ram_peak_extra": 0, "device_peak_extra": after}}


def qwen7b_shapes() -> list[tuple[str, tuple[int, ...]]]:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_7B))
    return [(n, tuple(p.shape)) for n, p in model.state_dict().items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "cluster" / "weight_sync.json"))
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--model", default="smollm2", help="a model dir or name (default: the embedded SmolLM2)")
    parser.add_argument("--layouts", default="fsdp_2,replicate_1", help="PARALLEL_WORLD,... trainer layouts to run")
    args = parser.parse_args()

    from trainer.model_io import resolve_model

    model_dir = resolve_model(args.model)
    runs = {}
    for layout in args.layouts.split(","):
        parallel, world = layout.rsplit("_", 1)
        runs[layout] = measure(model_dir, parallel, int(world), args.bucket_mb)
    from trainer.policy import PolicyTrainer
    from trainer.settings import TrainerSettings
    from trainer.weight_export import weight_specs

    smol_shapes = weight_specs(PolicyTrainer(model_dir, TrainerSettings(precision="fp32")))  # what a sync sends
    results = {
        "what": "one trainer->engine weight sync: trainer rank 0's peak extra memory and bytes per engine, "
                "before (whole fp32 state dict) and after (parameter by parameter, bf16) issue 24",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()),
        "settings": {"model": args.model, "model_dir": str(model_dir), "device": "cpu", "backend": "gloo",
                     "bucket_mb": args.bucket_mb, "engine_dtype": "bfloat16", "trainer_precision": "fp32",
                     "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")},
        "smollm2_measured": runs,
        "smollm2_model": {"fsdp_2": model_figures(smol_shapes, args.bucket_mb, 2)},
        "qwen2.5_7b_estimate": {"fsdp_8": model_figures(qwen7b_shapes(), args.bucket_mb, 8),
                                "config": QWEN25_7B},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    for name, run in runs.items():
        for mode in ("before", "after", "ipc"):
            r = run[mode]
            print(f"{args.model} {name:12s} {mode:6s}: rank 0 peak extra {r['peak_extra_bytes'] / MB:8.1f} MiB, "
                  f"bytes per engine {r['bytes_per_engine'] / 1024:10.1f} KiB (measured)")
    for label, fig in ((args.model, results["smollm2_model"]["fsdp_2"]),
                       ("Qwen2.5-7B", results["qwen2.5_7b_estimate"]["fsdp_8"])):
        print(f"{label}: {fig['params'] / 1e9:.2f} B params; before: host RAM +{fig['before']['host_ram_peak_extra'] / 2**30:.2f}"
              f" GiB, device +{fig['before']['device_peak_extra'] / 2**30:.2f} GiB; after: host RAM +0, device "
              f"+{fig['after']['device_peak_extra'] / 2**30:.2f} GiB; per engine: object store "
              f"{fig['bytes_per_engine']['object_store_fp32'] / 2**30:.2f} GiB, broadcast "
              f"{fig['bytes_per_engine']['broadcast_bf16'] / 2**30:.2f} GiB (estimate)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
