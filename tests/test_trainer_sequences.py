"""Per-token logprobs and entropy from logits (trainer/sequences.py): the values of a plain log_softmax, and
the memory of a chunked computation (no full-vocabulary fp32 copy of the logits, none kept for backward)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainer.sequences import shared_prefix_logprobs, token_logprobs
from trainer.settings import TrainerSettings


def _reference(logits, ids, temperature):
    """Written independently of the code under test: a full fp32 log_softmax."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def _logits(dtype=torch.float32, rows=3, width=7, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, width, vocab, generator=g) * 3).to(dtype).requires_grad_()
    return logits, torch.randint(0, vocab, (rows, width), generator=g)


class _Largest(TorchDispatchMode):
    """The most elements any single op allocates (a new tensor, not a view; of ``dtype`` if given), forward
    and backward."""

    def __init__(self, dtype=None):
        super().__init__()
        self.dtype, self.largest = dtype, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs \
                    and self.dtype in (None, t.dtype):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("entropy", [False, True, "grad"])
@pytest.mark.parametrize("chunk", [None, 50, 120])  # one chunk; one position per chunk; uneven chunks
def test_token_logprobs_equal_a_full_log_softmax_in_values_and_gradients(temperature, entropy, chunk):
    logits, ids = _logits()
    kwargs = {} if chunk is None else {"chunk_elements": chunk}
    logp, ent = token_logprobs(logits, ids, temperature, entropy, **kwargs)
    want_logp, want_ent = _reference(logits, ids, temperature)
    assert torch.allclose(logp, want_logp, atol=1e-5)
    if not entropy:
        assert ent is None
    else:
        assert torch.allclose(ent, want_ent, atol=1e-5)
        assert ent.requires_grad == (entropy == "grad")
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((logp * weights).sum() + (ent.sum() if entropy == "grad" else 0), logits)[0]
    want = torch.autograd.grad((want_logp * weights).sum() + (want_ent.sum() if entropy == "grad" else 0),
                               logits)[0]
    assert torch.allclose(got, want, atol=1e-5)


def test_token_logprobs_without_gradients_equal_the_reference():
    logits, ids = _logits(torch.bfloat16)
    with torch.no_grad():
        logp, ent = token_logprobs(logits, ids, 0.8, True, chunk_elements=100)
    want_logp, want_ent = _reference(logits.detach(), ids, 0.8)
    assert torch.allclose(logp, want_logp, atol=1e-5) and torch.allclose(ent, want_ent, atol=1e-5)


@pytest.mark.parametrize("entropy", [False, "grad"])
def test_token_logprobs_keep_no_float32_copy_of_the_logits(entropy):
    # bf16 logits of 4 rows x 64 positions x 2,000 tokens (chunks of 16 positions): an fp32 copy of them is
    # 2 MB. The chunked computation keeps nothing for the backward but its inputs, the bf16 logits and the
    # token ids (each checkpointed chunk saves its slice of them), and no op ever makes a tensor as large
    # as half the whole fp32 copy, forward or backward.
    logits, ids = _logits(torch.bfloat16, rows=4, width=64, vocab=2000)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with _Largest(torch.float32) as largest:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, ent = token_logprobs(logits, ids, 0.7, entropy, chunk_elements=4 * 2000 * 16)
        loss = logp.sum() + (ent.sum() if entropy == "grad" else 0)
        loss.backward()
    full_fp32 = logits.numel() * 4
    inputs = logits.numel() * logits.element_size() + ids.numel() * ids.element_size()
    assert sum(saved) <= inputs, sum(saved)  # the old code kept 4 (8 with the entropy) bytes per logit
    assert largest.largest * 4 <= full_fp32 // 2, largest.largest  # chunks, never the whole vocabulary x width


def test_the_shared_prefix_pass_scores_its_two_passes_without_joining_their_logits(tiny_model_dir):
    # The prompt pass gives the logits of each row's first response token, the response pass the rest:
    # joined, they would be a third [rows, response_len, vocab] tensor. Nothing that large is ever made
    # (the response pass's own logits are one position shorter).
    from trainer.policy import Policy

    policy = Policy(tiny_model_dir, TrainerSettings(precision="fp32"))
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[12, 13, 14]] * 2
    responses = [[20, 21, 22], [24, 25, 26, 27, 28], [30], [23], [20, 21, 22]]
    with torch.no_grad(), _Largest() as largest:
        logp, entropy, mask = shared_prefix_logprobs(policy.model, prompts, responses, pad_id=0, temperature=0.7,
                                                     with_entropy=True)
    assert largest.largest < len(prompts) * 5 * policy.model.config.vocab_size
    assert logp.shape == entropy.shape == mask.shape == (5, 5)
