"""Helpers shared by tests (not fixtures)."""


def teacher_forced_logprobs(model, prompt_ids, completion_ids, temperature=1.0):
    """Log-probability of each completion token under ``model`` given the prompt, at ``temperature``."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion_ids).unsqueeze(-1)).squeeze(-1).tolist()
