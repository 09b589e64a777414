"""Helpers shared by tests (not fixtures)."""


def teacher_forced_logprobs(model, prompt_ids, completion_ids, temperature=1.0):
    """Log-probability of each completion token under ``model`` given the prompt, at ``temperature``."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1).tolist()


def tiny_llama_variant(tmp_path_factory, tiny_model_dir, name, *, seed=1, **overrides) -> str:
    """A tiny Llama like ``tiny_model_dir`` (same tokenizer) with other random weights and any config
    overrides (e.g. another width or vocabulary), saved as a model dir."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    for key, value in overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def capture_step_gradients(trainer) -> list[dict]:
    """Record, in the returned list, the gradients each optimizer step of ``trainer`` is about to apply."""
    seen = []
    original = trainer._optimizer_step

    def step():
        seen.append({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return original()

    trainer._optimizer_step = step
    return seen
