"""Model specs: the embedded GGUF import, HF dirs, hub ids and clear errors."""
import json
from pathlib import Path

import pytest

from trainer.model_io import resolve_model


def test_bad_specs_fail_with_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not an embedded alias"):
        resolve_model("definitely-not-a-model")
    assert resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    # A trainer checkpoint given as a model (it used to hold an HF dir): says how to get one.
    ckpt = tmp_path / "checkpoints" / "step_00004"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.json").write_text("{}")
    with pytest.raises(ValueError, match=r"trainer checkpoint.*r1 export"):
        resolve_model(str(ckpt))


@pytest.mark.slow
def test_embedded_gguf_becomes_a_plain_hf_dir(smollm2_dir):
    d = Path(smollm2_dir)
    assert (d / "model.safetensors").stat().st_size > 100e6
    config = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in config  # loaders must not try to re-quantize
    assert config["model_type"] == "llama"
    # the import is reused, not redone
    mtime = (d / "model.safetensors").stat().st_mtime
    assert resolve_model("smollm2") == smollm2_dir
    assert (d / "model.safetensors").stat().st_mtime == mtime


@pytest.mark.slow
def test_imported_model_loads_and_answers(smollm2_dir, smollm2_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    tok = smollm2_tokenizer
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # a real pretrained model, not random weights
