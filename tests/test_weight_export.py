"""The trainer's weights one parameter at a time (trainer/weight_export.py) are the weights the whole-dict
export gave before (tests/legacy_weight_export.py): the same names, values and dtypes for a plain, a tied, a
LoRA and an MoE model, and in bf16 the same as casting the old dict."""
import pytest
import torch

from tests.helpers import tiny_llama_variant
from tests.legacy_weight_export import legacy_inference_tensors
from trainer.policy import PolicyTrainer
from trainer.settings import LoraSettings, OptimSettings, TrainerSettings
from trainer.weight_export import iter_inference_tensors, weight_specs


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory, tiny_model_dir):
    return tiny_llama_variant(tmp_path_factory, tiny_model_dir, "untied", tie_word_embeddings=False)


def _trainer(model_dir, lora=False):
    settings = TrainerSettings(precision="fp32", lora=LoraSettings(rank=4) if lora else None,
                               optim=OptimSettings(lr=1e-2))
    trainer = PolicyTrainer(model_dir, settings)
    if lora:  # LoRA B starts at zero: train a step so the merged delta is not zero
        trainer.train_sft([[1, 2, 3]], [[4, 5, 6]])
        assert any(float(p.detach().abs().max()) > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)
    return trainer


@pytest.mark.parametrize("kind", ["plain", "tied", "lora", "moe"])
def test_parameter_by_parameter_equals_the_whole_dict(kind, untied_dir, tiny_model_dir, tiny_moe_dir):
    model_dir = {"plain": untied_dir, "tied": tiny_model_dir, "lora": tiny_model_dir, "moe": tiny_moe_dir}[kind]
    trainer = _trainer(model_dir, lora=kind == "lora")
    before = legacy_inference_tensors(trainer)
    names = [name for name, _ in iter_inference_tensors(trainer)]
    after = dict(iter_inference_tensors(trainer))
    assert len(names) == len(set(names)) == len(after)  # each weight once
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name
    assert trainer.inference_tensors().keys() == before.keys()
    assert weight_specs(trainer) == [(n, tuple(after[n].shape)) for n in names]
    if kind == "moe":  # per-expert checkpoint names, as vLLM loads them
        assert any(".experts.0." in n for n in names) and not any(n.endswith("gate_up_proj") for n in names)
    if kind in ("tied", "lora", "moe"):
        assert "lm_head.weight" in after
    bf16 = dict(iter_inference_tensors(trainer, torch.bfloat16))
    for name, tensor in before.items():
        assert bf16[name].dtype == torch.bfloat16 and torch.equal(bf16[name], tensor.to(torch.bfloat16)), name


def test_save_pretrained_writes_the_same_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    trainer = _trainer(tiny_model_dir, lora=True)
    before = legacy_inference_tensors(trainer)
    saved = load_file(str(tmp_path / "m" / "model.safetensors")) if trainer.save_pretrained(tmp_path / "m") else {}
    assert "lm_head.weight" not in saved  # tied: transformers re-ties it on load
    assert saved.keys() == before.keys() - {"lm_head.weight"}
    assert all(torch.equal(saved[n], before[n]) for n in saved)
