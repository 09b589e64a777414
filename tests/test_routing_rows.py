"""R3 routing as it travels: narrow dtypes (uint8 up to 256 experts, else uint16) from the engine to the GPU copy,
and a group's prompt rows once, not once per sample, with the replayed tensor unchanged."""
import pickle

import numpy as np
import pytest
import torch
from ray import cloudpickle

from rollout.routing_capture import sentinel_of
from rollout.routing_rows import SampleRouting, share_group_prompts, share_prompt_rows, shipped_bytes
from rollout.types import Completion, Generation
from trainer.routing_layout import padded_spans, prompt_pass_spans, response_pass_spans, routing_tensor
from trainer.routing_replay import expert_ids, routing_coverage

LAYERS, K, EXPERTS = 3, 2, 8


def group(prompt_len: int, response_lens: list[int], seed: int = 0) -> list[np.ndarray]:
    """The rows an engine returns for one prompt's samples: the same prompt rows, each its own response rows."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, EXPERTS, (prompt_len, LAYERS, K)).astype(np.uint8)
    return [np.concatenate([prompt, rng.integers(0, EXPERTS, (r - 1, LAYERS, K)).astype(np.uint8)])
            for r in response_lens]


def pickled_bytes(obj) -> int:
    """What Ray's serializer sends for ``obj``: cloudpickle protocol 5, numpy buffers out of band."""
    buffers = []
    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(data) + sum(memoryview(b).nbytes for b in buffers)


def test_a_group_of_n_samples_ships_its_prompt_rows_once():
    p, responses = 40, [9, 3, 17, 5, 12, 8, 2, 20]
    samples = group(p, responses)
    shared = share_prompt_rows(p, samples)
    row = LAYERS * K  # bytes per token row, uint8
    once = (p + sum(r - 1 for r in responses)) * row
    assert shipped_bytes(shared) == once
    assert shipped_bytes(samples) == sum(len(s) for s in samples) * row == once + (len(responses) - 1) * p * row
    # Measured as Ray pickles it, engine -> driver and driver -> trainer: prompt + n responses, plus small framing.
    assert once <= pickled_bytes(shared) < once + 2000
    assert pickled_bytes(samples) > once + (len(responses) - 1) * p * row
    back = pickle.loads(cloudpickle.dumps(shared))
    assert all(b.prompt is back[0].prompt for b in back)  # one array again on the other side
    for before, after in zip(samples, back):  # and every sample's rows as the engine returned them
        assert after.shape == before.shape and after.dtype == np.uint8 and np.array_equal(np.asarray(after), before)


def test_shared_rows_answer_as_the_plain_array_for_any_ndarray_method():
    # Code written for the engine's plain [tokens, layers, k] array (r1 r3-check's shifted routing, a user's
    # script) meets the shared form after an engine hands it over: every ndarray method must still work.
    [sample] = group(6, [5])
    [shared] = share_prompt_rows(6, [sample])
    assert np.array_equal(shared.astype(np.int64), sample.astype(np.int64))
    assert shared.tolist() == sample.tolist() and shared.max() == sample.max() and shared.nbytes == sample.nbytes
    assert np.array_equal(np.where(shared == 0, shared, (shared.astype(np.int64) + 1) % EXPERTS),
                          np.where(sample == 0, sample, (sample.astype(np.int64) + 1) % EXPERTS))
    with pytest.raises(AttributeError):
        shared.no_such_attribute
    back = pickle.loads(pickle.dumps(shared))  # plain pickle (unpickling probes attributes before the slots are set)
    assert np.array_equal(np.asarray(back), sample)


def test_a_sibling_whose_prompt_rows_differ_keeps_its_own():
    samples = group(10, [4, 4, 4])
    samples[1] = samples[1].copy()
    samples[1][3] = sentinel_of(np.uint8)  # e.g. a prefix-cache row its engine no longer held: unknown for it only
    shared = share_prompt_rows(10, [samples[0], samples[1], None, samples[2]])
    assert shared[2] is None
    assert shared[0].prompt is shared[3].prompt and shared[1].prompt is not shared[0].prompt
    for before, after in zip([samples[0], samples[1], samples[2]], [shared[0], shared[1], shared[3]]):
        assert np.array_equal(np.asarray(after), before)


def test_engines_hand_generations_over_with_shared_prompt_rows():
    samples = group(6, [3, 5])
    gen = Generation(prompt_ids=list(range(6)), completions=[
        Completion("a", [1, 2, 3], None, "stop", routed_experts=samples[0]),
        Completion("b", [1, 2, 3, 4, 5], None, "stop", routed_experts=samples[1])])
    share_group_prompts([gen])
    first, second = (c.routed_experts for c in gen.completions)
    assert isinstance(first, SampleRouting) and first.prompt is second.prompt
    assert (second < EXPERTS).all() and second.shape == (10, LAYERS, K)


def test_the_replayed_tensor_is_the_same_from_shared_rows_in_every_layout():
    prompts, responses = [12, 12, 12, 7], [5, 9, 1, 4]
    samples = group(12, responses[:3]) + group(7, responses[3:], seed=1)
    shared = share_prompt_rows(12, samples[:3]) + share_prompt_rows(7, samples[3:])
    width = max(prompts)
    for spans, shape in [(padded_spans(prompts, responses, width), (4, width + max(responses))),
                         (prompt_pass_spans([0, 3], [12, 7], width), (2, width)),
                         (response_pass_spans(prompts, responses), (4, max(responses) - 1))]:
        want = routing_tensor(samples, spans, shape, LAYERS, K, EXPERTS)
        assert torch.equal(routing_tensor(shared, spans, shape, LAYERS, K, EXPERTS), want)
    assert routing_coverage(shared, prompts, responses, LAYERS) == routing_coverage(samples, prompts, responses, LAYERS)


@pytest.mark.parametrize("experts,dtype", [(128, torch.uint8), (256, torch.uint8), (300, torch.uint16)])
def test_the_routing_tensor_stays_narrow_and_reads_back_as_the_ids(experts, dtype):
    narrow = np.uint8 if experts <= 256 else np.uint16
    rows = np.array([[[1, experts - 1]], [[sentinel_of(narrow)] * 2], [[0, 5]]], dtype=narrow)  # row 1 unknown
    out = routing_tensor([rows], padded_spans([2], [2], 3), (1, 5), 1, 2, experts)
    assert out.dtype == dtype and out.element_size() == (1 if dtype == torch.uint8 else 2)  # int64 was 8
    ids = expert_ids(out)
    assert ids.dtype == torch.long
    # left padding (1 column), 3 rows of the sample, 1 absent column (the last sampled token): -1 where unknown
    assert ids[0, :, 0].tolist() == [[-1, -1], [1, experts - 1], [-1, -1], [0, 5], [-1, -1]]


def test_an_expert_id_beyond_the_model_is_refused_in_one_line():
    rows = np.array([[[1, 9]]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"routed_experts\[0\]: expert id 9 >= the model's 8 experts"):
        routing_tensor([rows], padded_spans([1], [1], 1), (1, 2), 1, 2, EXPERTS)
