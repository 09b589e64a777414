"""The trainer's GPU path in one command, on a GPU machine that has torch with CUDA and nothing else:

    python bench/gpu_check.py                       # one GPU: NCCL (+ gloo) group, FSDP2 bf16, DCP, bf16 gather
    python bench/gpu_check.py --device cpu --preset tiny --out /tmp/gpu_check.json   # the same code on gloo

It runs, in one process (a trainer group of world size 1), what the GPU layouts of the recipe do:

1. ``group``: the trainer group on the backend :func:`trainer.distributed.backend_for` picks for the device
   (issue 24: ``"cpu:gloo,cuda:nccl"`` on GPUs); ``metrics``: a reduction on a CPU tensor (what
   ``reduce_metrics`` does at the end of a step; NCCL alone has no CPU backend) and one on the device.
2. ``shard``: FSDP2 with the trainer's ``MixedPrecisionPolicy`` (:func:`trainer.data_parallel.shard`: bf16
   parameters and all-gathers, fp32 gradient reduction, fp32 master weights).
3. ``step``: optimizer steps (forward, backward, clip, AdamW) on random tokens.
4. ``dcp``: a sharded ``torch.distributed.checkpoint`` save and load (:mod:`trainer.checkpoint_io`), then
   the weights and AdamW moments compared with those saved (they must be equal).
5. ``gather``: the weights as the engines get them (:func:`trainer.weight_export.iter_inference_tensors`:
   each parameter cast to bf16 on its shard and made whole with ``full_tensor()``, one at a time), checked
   against the trainer's weights cast to bf16, with the bytes a sync sends and the memory the gather adds.
6. ``ipc``: the colocated sync (:mod:`rollout.weight_ipc`): those tensors packed into bf16 buckets on the GPU
   and opened by CUDA IPC handle in a second process on the same GPU (what a vLLM worker does before
   ``load_weights``), every tensor's bits compared.
7. ``offload``: the trainer's weights and AdamW state to host RAM and back (:mod:`trainer.offload`, what a
   colocated trainer does while the engines generate), the weights compared, then one more step.

Timings and peak CUDA memory per phase go to ``--out`` (default ``docs/cluster/gpu_check.json``) with the
torch / CUDA / NCCL versions, the device, the git commit and every setting. Exit status 1 when a phase fails.

vLLM and Ray are never imported (they are not on the GPU check machine). The model is a small Qwen2 built
from a config (no download: the machine may have no internet); without ``transformers`` it is a plain torch
decoder of the same shape and the gather is the per-parameter loop itself (the export needs transformers'
name mapping). tests/test_gpu_check.py runs every path but CUDA with ``--device cpu``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's trainer/ modules, run from anywhere
sys.path.insert(0, str(ROOT / "bench"))  # its two helper modules, also when imported by a test

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from gpu_check_ipc import checksum, sync_over_ipc  # noqa: E402
from gpu_check_model import PRESETS, build_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model shape (default: qwen0.5b on "
                   "cuda, tiny on cpu)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--model", choices=["auto", "transformers", "plain"], default="auto",
                   help="auto: a transformers Qwen2 when transformers imports, else the plain torch decoder")
    p.add_argument("--batch", type=int, default=None, help="rows per step (default: 4 on cuda, 2 on cpu)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default: 1024 on cuda, 32 on cpu)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is the warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=300.0, help="the group's collective timeout")
    p.add_argument("--bucket-mb", type=float, default=512.0, help="IPC bucket size (the trainer's default)")
    p.add_argument("--ckpt-dir", default=None, help="where the DCP checkpoint goes (default: a temp dir, removed)")
    p.add_argument("--out", default=str(ROOT / "docs" / "cluster" / "gpu_check.json"))
    args = p.parse_args(argv)
    on_cuda = args.device == "cuda"
    args.preset = args.preset or ("qwen0.5b" if on_cuda else "tiny")
    args.batch = args.batch or (4 if on_cuda else 2)
    args.seq = args.seq or (1024 if on_cuda else 32)
    return args


class Report:
    """The phases' results: seconds, peak device memory, figures; a failed phase records its error line."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.phases, self.failed = device, {}, []

    @contextlib.contextmanager
    def phase(self, name: str):
        entry = self.phases.setdefault(name, {})
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            entry["cuda_allocated_before_mb"] = torch.cuda.memory_allocated() / 2**20
        started = time.perf_counter()
        try:
            yield entry
            entry["ok"] = True
        except Exception as exc:  # recorded, and the check goes on with what does not depend on it
            entry["ok"] = False
            entry["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            entry["traceback"] = traceback.format_exc(limit=6)
            self.failed.append(name)
        finally:
            if cuda:
                with contextlib.suppress(Exception):  # after a CUDA error the figures may be gone: keep the error
                    torch.cuda.synchronize()
                    entry["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            entry["seconds"] = time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def whole_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter made whole, fp32, on the CPU (the reference the checks compare against)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).float().cpu().clone()
    return out


def adam_moments(optimizer) -> list[torch.Tensor]:
    """AdamW's two moments of every parameter, whole, fp32, on the CPU."""
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                t = optimizer.state[p][key].detach()
                out.append((t.full_tensor() if hasattr(t, "full_tensor") else t).float().cpu().clone())
    return out


def max_diff(a, b) -> float:
    """The largest absolute difference between paired tensors (0.0 for none)."""
    return max((float((x - y).abs().max()) for x, y in zip(a, b)), default=0.0)


def bench_trainer(model, optimizer, scheduler, args) -> SimpleNamespace:
    """What :mod:`trainer.checkpoint_io` and :mod:`trainer.weight_export` read off a PolicyTrainer."""
    settings = SimpleNamespace(model_dump=lambda mode="json": {"bench": "gpu_check", "precision": args.precision})
    return SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, rank=0, world_size=1,
                           parallel="fsdp", is_lora=False, model_dir=f"<gpu_check {args.preset}>",
                           settings=settings, optimizer_steps=0)


def gather_bf16(trainer, kind: str, entry: dict):
    """The sync's tensors, one whole bf16 parameter at a time: the project's export (with transformers), else
    the same per-parameter loop on the model's own names (shard cast to bf16, then ``full_tensor()``)."""
    if kind.startswith("transformers"):
        from trainer.weight_export import iter_inference_tensors

        entry["api"] = "trainer.weight_export.iter_inference_tensors"
        yield from iter_inference_tensors(trainer, dtype=torch.bfloat16)
        return
    entry["api"] = "per-parameter full_tensor() loop (no transformers)"
    for name, tensor in trainer.model.state_dict().items():
        tensor = tensor.detach().to(torch.bfloat16)
        yield name, (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor)


def git_commit() -> dict:
    """The checkout's commit and whether tracked files differ from it (None where there is no git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode == 0:
            return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def environment(device: torch.device) -> dict:
    """Versions (torch, CUDA, NCCL, transformers), the device and the commit: what the figures ran on."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
           "cuda": torch.version.cuda, **git_commit()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, device_memory_gb=props.total_memory / 1e9,
                   nccl=".".join(map(str, version)) if isinstance(version := torch.cuda.nccl.version(), tuple)
                   else str(version))
    else:
        env.update(device_name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    with contextlib.suppress(ImportError):
        import transformers

        env["transformers"] = transformers.__version__
    return env


def run_check(args) -> dict:
    """Every phase; returns the report (also what ``--out`` gets)."""
    import torch.distributed as dist

    from trainer import distributed as td

    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: --device cuda but torch sees no GPU (torch "
                             f"{torch.__version__}, CUDA {torch.version.cuda}); --device cpu runs it on gloo")
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    report = Report(device)
    result = {"settings": vars(args), "environment": environment(device), "phases": report.phases}

    with report.phase("group") as e:
        backend = td.backend_for(device)
        ip, port = td.node_address()
        td.init_group(f"tcp://{ip}:{port}", 0, 1, backend, args.timeout_s)
        e["backend"] = backend
        e["init_method"] = "tcp (trainer.distributed.node_address)"

    with report.phase("metrics") as e:
        # The end of a step: metrics reduced on a CPU tensor (the gloo half of the group) and on the device.
        on_cpu = td.reduce_metrics({"loss": 1.5, "rows": 4.0}, ["loss", "rows"], ["loss"], device="cpu")
        on_device = td.reduce_metrics({"loss": 1.5, "rows": 4.0}, ["loss", "rows"], ["loss"], device=device)
        e["metrics_cpu_tensor_ok"] = on_cpu == {"loss": 1.5, "rows": 4.0}
        e["metrics_device_tensor_ok"] = on_device == {"loss": 1.5, "rows": 4.0}
        if not (e["metrics_cpu_tensor_ok"] and e["metrics_device_tensor_ok"]):
            raise RuntimeError(f"metric reduction gave {on_cpu} (cpu) and {on_device} (device)")

    with report.phase("shard") as e:
        model, kind = build_model(args)
        e["model"] = kind
        e["parameters"] = sum(p.numel() for p in model.parameters())
        e["fp32_weights_mb"] = e["parameters"] * 4 / 2**20
        model.to(device)
        from trainer.data_parallel import shard

        shard(model, device, args.precision, 0, 1)
        e["api"] = "trainer.data_parallel.shard"
        mp = getattr(model, "mp_policy", None) or getattr(getattr(model, "_get_fsdp_state", lambda: None)(),
                                                          "_mp_policy", None)
        e["mixed_precision"] = repr(mp) if mp is not None else None
        e["master_dtype"] = str(next(model.parameters()).dtype)
        e["sharded_parameters"] = sum(hasattr(p, "full_tensor") for p in model.parameters())

    if {"group", "shard"} & set(report.failed):  # no group or no sharded model: nothing after this can run
        return finish(result, report)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = bench_trainer(model, optimizer, scheduler, args)
    vocab = PRESETS[args.preset]["vocab"]

    with report.phase("step") as e:
        seconds, losses = [], []
        generator = torch.Generator().manual_seed(args.seed)
        for _ in range(args.steps):
            tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=generator).to(device)
            _sync(device)
            started = time.perf_counter()
            logits = model(input_ids=tokens[:, :-1]).logits
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trainer.optimizer_steps += 1
            _sync(device)
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
        timed = seconds[1:] or seconds
        e.update(step_seconds=seconds, losses=losses, grad_norm=float(grad_norm), logits_dtype=str(logits.dtype),
                 tokens_per_second=args.batch * args.seq / (sum(timed) / len(timed)))
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"non-finite loss {losses}")

    with report.phase("dcp") as e:
        from trainer import checkpoint_io

        if "step" in report.failed:
            raise RuntimeError("skipped: the step failed, so there is no AdamW state to save")

        saved_weights, saved_moments = whole_weights(model), adam_moments(optimizer)
        with tempfile.TemporaryDirectory(prefix="gpu-check-ckpt-", dir=args.ckpt_dir) as folder:
            _sync(device)
            t0 = time.perf_counter()
            checkpoint_io.save_checkpoint(trainer, folder, {"step": trainer.optimizer_steps})
            _sync(device)
            e["save_seconds"] = time.perf_counter() - t0
            e["bytes_on_disk"] = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
            e["files"] = sorted(str(f.relative_to(folder)) for f in Path(folder).rglob("*") if f.is_file())
            with torch.no_grad():  # what the load must undo
                for p in model.parameters():
                    p.zero_()
                for moment in (s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")):
                    moment.zero_()
            t0 = time.perf_counter()
            checkpoint_io.load_checkpoint(trainer, folder)
            _sync(device)
            e["load_seconds"] = time.perf_counter() - t0
        e["api"] = "trainer.checkpoint_io.save_checkpoint / load_checkpoint"
        e["weights_max_diff"] = max_diff(saved_weights.values(), whole_weights(model).values())
        e["moments_max_diff"] = max_diff(saved_moments, adam_moments(optimizer))
        if e["weights_max_diff"] or e["moments_max_diff"]:
            raise RuntimeError(f"DCP round trip changed the state: weights {e['weights_max_diff']}, AdamW moments "
                               f"{e['moments_max_diff']}")

    with report.phase("gather") as e:
        reference = {name: w.to(torch.bfloat16) for name, w in whole_weights(model).items()}
        _sync(device)
        t0 = time.perf_counter()
        count, sent, largest, worst, names = 0, 0, 0, 0.0, []
        for name, tensor in gather_bf16(trainer, kind, e):
            if tensor.dtype != torch.bfloat16 or tensor.device.type != device.type:
                raise RuntimeError(f"{name}: gathered as {tensor.dtype} on {tensor.device}, expected bfloat16 on "
                                   f"{device.type}")
            count, sent = count + 1, sent + tensor.numel() * tensor.element_size()
            largest = max(largest, tensor.numel() * tensor.element_size())
            ref = reference.get(name)
            if ref is not None:
                worst = max(worst, float((tensor.float().cpu() - ref.float()).abs().max()))
                names.append(name)
            del tensor  # one whole parameter alive at a time, as in a sync
        _sync(device)
        e.update(seconds_gather=time.perf_counter() - t0, tensors=count, bytes=sent, largest_tensor_bytes=largest,
                 compared=len(names), max_diff_vs_bf16_weights=worst)
        if device.type == "cuda":
            e["gather_added_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 - e["cuda_allocated_before_mb"]
        if worst or len(names) < len(reference):
            raise RuntimeError(f"gathered bf16 weights differ from the trainer's ({worst}) or miss some "
                               f"({len(names)} of {len(reference)} compared)")

    with report.phase("ipc") as e:
        # The colocated sync (cluster.weight_sync: ipc): bf16 buckets packed on this GPU, opened by another
        # process on the same GPU through CUDA IPC handles (shared memory on CPU), checked bit for bit.
        expected, specs = {}, []
        for name, tensor in gather_bf16(trainer, kind, {}):
            expected[name] = checksum(tensor)
            specs.append((name, tuple(tensor.shape)))
        got = sync_over_ipc(gather_bf16(trainer, kind, {}), specs, device, args.bucket_mb, args.timeout_s)
        seen = got.pop("seen")
        stderr = got.pop("receiver_stderr")
        e.update(api="rollout.weight_ipc.IPCSender / receive_bucket", tensors=len(seen), **got)
        wrong = sorted(name for name in expected if seen.get(name) != expected[name])
        if wrong or got["receiver_rc"]:
            raise RuntimeError(f"the receiving process saw {len(wrong)} tensor(s) differ or missing (first: "
                               f"{wrong[:3]}), exit {got['receiver_rc']}: {stderr}")

    with report.phase("offload") as e:
        # Colocation's other half (trainer/offload.py): the trainer's weights and AdamW state to host RAM while
        # the engines generate, then back, and a step after it. CPU: nothing to move (the functions say False).
        from trainer.offload import offload_states, reload_states

        trainer.device = device
        before = whole_weights(model)
        allocated = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None
        t0 = time.perf_counter()
        e["offloaded"] = offload_states(trainer)
        e["offload_seconds"] = time.perf_counter() - t0
        if device.type == "cuda":
            e["cuda_allocated_mb_before"] = allocated
            e["cuda_allocated_mb_offloaded"] = torch.cuda.memory_allocated() / 2**20
        t0 = time.perf_counter()
        e["reloaded"] = reload_states(trainer)
        e["reload_seconds"] = time.perf_counter() - t0
        e["weights_max_diff"] = max_diff(before.values(), whole_weights(model).values())
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(1))
        tokens = tokens.to(device)
        logits = model(input_ids=tokens[:, :-1]).logits
        loss = nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        e["loss_after_reload"] = loss.item()
        if e["weights_max_diff"] or e["offloaded"] != (device.type == "cuda") or not math.isfinite(loss.item()):
            raise RuntimeError(f"offload and reload: weights changed by {e['weights_max_diff']}, offloaded="
                               f"{e['offloaded']}, loss {loss.item()}")

    return finish(result, report)


def finish(result: dict, report: Report) -> dict:
    """The report's closing figures; the group is left."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    if report.device.type == "cuda":
        result["cuda_peak_mb_overall"] = max(p.get("cuda_peak_mb", 0.0) for p in report.phases.values())
    with contextlib.suppress(ImportError):
        import resource

        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["failed"] = report.failed
    result["ok"] = not report.failed
    result["imported"] = {name: name in sys.modules for name in ("vllm", "ray", "transformers")}
    return result


def main(argv=None) -> int:
    """Run the check, write ``--out``, print one line per phase; 0 when every phase passed."""
    args = parse_args(argv)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    result = run_check(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for name, entry in result["phases"].items():
        extra = entry.get("error") or ", ".join(f"{k}={entry[k]:.4g}" if isinstance(entry[k], float) else f"{k}={entry[k]}"
                                                for k in ("seconds", "cuda_peak_mb") if k in entry)
        print(f"gpu_check {name}: {'ok' if entry.get('ok') else 'FAILED'} ({extra})")
    print(f"gpu_check: wrote {out}" + ("" if result["ok"] else f"; failed: {', '.join(result['failed'])}"))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
