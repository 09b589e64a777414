"""Rollout Routing Replay in the trainer: the replayed experts are used, weights follow each family's rule,
gradients reach the router, and every forward that scores rollout tokens replays."""
import numpy as np
import pytest
import torch

from trainer.routing_layout import Span, padded_spans, routing_tensor
from trainer.routing_replay import (RoutingReplay, check_coverage, moe_blocks, replayed_weights, routing_coverage,
                                    routing_metrics)


def _tiny(family: str):
    """A 2-layer model of one MoE family, random weights."""
    import transformers as tf

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64)
    if family == "mixtral":
        config = tf.MixtralConfig(**common, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2)
        model = tf.MixtralForCausalLM(config)
    elif family == "qwen2_moe":
        config = tf.Qwen2MoeConfig(**common, intermediate_size=48, moe_intermediate_size=24, num_experts=4,
                                   num_experts_per_tok=2, shared_expert_intermediate_size=48, norm_topk_prob=False)
        model = tf.Qwen2MoeForCausalLM(config)
    elif family == "qwen3_moe":
        config = tf.Qwen3MoeConfig(**common, intermediate_size=48, moe_intermediate_size=24, num_experts=4,
                                   num_experts_per_tok=2, norm_topk_prob=True, head_dim=8)
        model = tf.Qwen3MoeForCausalLM(config)
    else:
        config = tf.DeepseekV3Config(**{**common, "num_key_value_heads": 4}, intermediate_size=48, moe_intermediate_size=24, n_routed_experts=8,
                                     num_experts_per_tok=2, n_group=2, topk_group=1, n_shared_experts=1,
                                     first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
                                     qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=2.5,
                                     norm_topk_prob=True)
        model = tf.DeepseekV3ForCausalLM(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for block in moe_blocks(model):
            block.router.weight.normal_(0, 1.0)
            if hasattr(block.router, "e_score_correction_bias"):
                block.router.e_score_correction_bias.normal_(0, 0.1)
    return model


FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"]


def _reference_weights(router, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Written independently of the code under test: each family's gate rule on a given expert set."""
    if hasattr(router, "e_score_correction_bias"):
        s = torch.sigmoid(logits.double()).gather(1, ids)
        return (s / s.sum(-1, keepdim=True) if router.norm_topk_prob else s) * router.routed_scaling_factor
    e = torch.exp(logits.double() - logits.double().max(-1, keepdim=True).values)
    if getattr(router, "norm_topk_prob", True):
        chosen = e.gather(1, ids)
        return chosen / chosen.sum(-1, keepdim=True)
    return (e / e.sum(-1, keepdim=True)).gather(1, ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_replays_its_own_choice_exactly_and_other_sets_by_its_gate_rule(family):
    model = _tiny(family)
    router = moe_blocks(model)[0].router
    hidden = torch.randn(40, 32)
    logits, weights, ids = router(hidden)
    assert torch.allclose(replayed_weights(router, logits, ids).float(), weights.float(), atol=1e-6)
    experts = router.weight.shape[0]
    other = torch.stack([torch.randperm(experts)[:router.top_k] for _ in range(40)])
    got = replayed_weights(router, logits, other)
    assert torch.allclose(got.double(), _reference_weights(router, logits, other), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_a_different_routing_changes_the_output_and_the_used_experts(family):
    model = _tiny(family).eval()
    replay = RoutingReplay(model)
    ids = torch.randint(0, 64, (2, 9))
    plain = model(input_ids=ids).logits
    own = _own_routing(model, ids)  # [2, 9, layers, k]
    replay.set(own)
    same = model(input_ids=ids).logits
    counts = replay.take_counts()
    replay.set((own + 1) % replay.num_experts)
    shifted = model(input_ids=ids).logits
    shifted_counts = replay.take_counts()
    replay.clear()
    assert torch.allclose(same, plain, atol=1e-5)
    assert (shifted - plain).abs().max() > 1e-3
    assert counts["routers"] == 2 * 9 * len(replay.blocks) and counts["routers_replayed"] == counts["routers"]
    assert counts["routers_plumbing_differ"] == 0 and counts["routers_differ_own"] == 0
    # the experts really used are the replayed ones (plumbing 0), and the router's own choice differs from them:
    # every router of the first MoE layer; later layers see other hidden states, where a few may agree by chance
    assert shifted_counts["routers_plumbing_differ"] == 0
    assert shifted_counts["routers_differ_own"] >= counts["routers"] / 2 + 0.8 * counts["routers"] / 2


def _own_routing(model, ids) -> torch.Tensor:
    recorded = []
    hooks = [b.router.register_forward_hook(lambda m, i, o: recorded.append(o[2])) for b in moe_blocks(model)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return torch.stack(recorded, dim=1).reshape(ids.shape[0], ids.shape[1], len(recorded), -1)


def test_comparing_without_replaying_measures_the_mismatch_and_changes_nothing():
    model = _tiny("mixtral").eval()
    replay = RoutingReplay(model)
    ids = torch.randint(0, 64, (3, 7))
    plain = model(input_ids=ids).logits
    own = _own_routing(model, ids)
    flipped = own.clone()
    flipped[0, 2, 1] = (own[0, 2, 1] + 1) % 4  # one router of one token, in the second MoE layer
    flipped[0, 2, 1, 1] = (flipped[0, 2, 1, 0] + 1) % 4  # keep the two ids distinct
    replay.enabled = False
    replay.set(flipped)
    out = model(input_ids=ids).logits
    fractions = routing_metrics(replay.take_counts())
    replay.clear()
    assert torch.equal(out, plain)
    assert fractions["router_mismatch_own"] == pytest.approx(1 / (3 * 7 * 2))
    assert fractions["token_mismatch_own"] == pytest.approx(1 / (3 * 7))
    assert "replay_plumbing_mismatch" not in fractions  # nothing replayed: no plumbing to check


def test_unknown_rows_route_themselves_and_never_duplicate_experts():
    model = _tiny("mixtral").eval()
    replay = RoutingReplay(model)
    ids = torch.randint(0, 64, (1, 5))
    plain = model(input_ids=ids).logits
    replay.set(torch.full((1, 5, 2, 2), -1))
    out = model(input_ids=ids).logits
    assert torch.allclose(out, plain, atol=1e-6)
    assert replay.take_counts()["routers"] == 0


def test_routing_tensor_places_rows_marks_unknowns_and_refuses_bad_rollout_routing():
    a = np.arange(2 * 3 * 2, dtype=np.uint8).reshape(2, 3, 2) % 4
    a[1, 0] = 255  # the engine's "unknown" marker
    t = routing_tensor([a, None], [Span(0, 0, 0, 2, 1), Span(1, 1, 0, 3, 0)], (2, 4), 3, 2, 4)
    assert t.shape == (2, 4, 3, 2)
    assert (t[0, 0] == -1).all() and (t[0, 3] == -1).all() and (t[1] == -1).all()
    assert torch.equal(t[0, 1], torch.from_numpy(a[0].astype(np.int64)))
    assert (t[0, 2, 0] == -1).all() and torch.equal(t[0, 2, 1:], torch.from_numpy(a[1, 1:].astype(np.int64)))
    b = np.zeros((1, 1, 2), dtype=np.uint8)
    b[0, 0] = [255, 3]  # one id equal to the marker is not a marker row (256 experts: 255 is an id)
    assert routing_tensor([b], [Span(0, 0, 0, 1, 0)], (1, 1), 1, 2, 256)[0, 0, 0].tolist() == [255, 3]
    with pytest.raises(ValueError, match=r"routed_experts\[0\]: shape"):
        routing_tensor([a[:, :2]], [Span(0, 0, 0, 2, 0)], (1, 4), 3, 2, 4)
    with pytest.raises(ValueError, match="expert id 7"):
        routing_tensor([np.full((2, 3, 2), 7, dtype=np.uint8)], [Span(0, 0, 0, 2, 0)], (1, 4), 3, 2, 4)
    assert padded_spans([2, 3], [4, 1], 3) == [Span(0, 0, 0, 6, 1), Span(1, 1, 0, 4, 0)]


# ---- the policy trainer on an upcycled Mixtral ---------------------------------------------------------------

def _rows_routing(policy, prompts, responses, shift: int = 0) -> list[np.ndarray]:
    """Each row's own routing as an engine would report it ([p + r - 1, layers, k] uint8), shifted by ``shift``."""
    out = []
    for p, r in zip(prompts, responses):
        own = _own_routing(policy.model, torch.tensor([list(p) + list(r)]))[0, :-1]
        out.append(((own + shift) % policy.replay.num_experts).numpy().astype(np.uint8))
    return out


PROMPTS = [[1, 5, 9, 14], [1, 5, 9, 14], [1, 7, 3]]
RESPONSES = [[21, 22, 23], [21, 30], [40, 41, 42, 43]]


@pytest.fixture()
def moe_policy(tiny_moe_dir):
    from trainer.policy import PolicyTrainer
    from trainer.settings import TrainerSettings

    return PolicyTrainer(tiny_moe_dir, TrainerSettings(precision="fp32", shared_prefix=False))


def test_every_scoring_path_replays_the_same_way(moe_policy):
    """Padded path, shared-prefix path (prompt pass + response pass): the same logprobs under one routing."""
    own = _rows_routing(moe_policy, PROMPTS, RESPONSES)
    shifted = _rows_routing(moe_policy, PROMPTS, RESPONSES, shift=1)
    plain = moe_policy.logprobs(PROMPTS, RESPONSES)
    replay_own = moe_policy.logprobs(PROMPTS, RESPONSES, routing=own)
    padded = moe_policy.logprobs(PROMPTS, RESPONSES, routing=shifted)
    moe_policy.settings.shared_prefix = True
    shared = moe_policy.logprobs(PROMPTS, RESPONSES, routing=shifted)
    shared_plain = moe_policy.logprobs(PROMPTS, RESPONSES)
    flat = lambda rows: np.concatenate([np.array(r) for r in rows])  # noqa: E731
    assert np.allclose(flat(replay_own), flat(plain), atol=1e-5)
    assert np.abs(flat(padded) - flat(plain)).max() > 1e-3  # replaying other experts changes the logprobs
    assert np.allclose(flat(shared), flat(padded), atol=1e-4)
    assert np.allclose(flat(shared_plain), flat(plain), atol=1e-4)


def _router_grads(policy, routing, checkpointing: bool) -> torch.Tensor:
    if checkpointing:
        policy.model.gradient_checkpointing_enable()
    policy.model.train()
    policy.model.zero_grad(set_to_none=True)
    logp, _, mask = policy._forward(PROMPTS[1:], RESPONSES[1:], routing=routing[1:])
    (logp * mask).sum().backward()
    policy._end_replay()
    grads = torch.cat([b.router.weight.grad.flatten() for b in policy.replay.blocks])
    policy.model.gradient_checkpointing_disable()
    return grads


def test_router_gets_gradients_under_replay_and_checkpointed_backward_replays_too(moe_policy):
    shifted = _rows_routing(moe_policy, PROMPTS, RESPONSES, shift=1)
    plain = _router_grads(moe_policy, shifted, checkpointing=False)
    checkpointed = _router_grads(moe_policy, shifted, checkpointing=True)
    assert plain.abs().sum() > 0
    assert torch.allclose(checkpointed, plain, atol=1e-6, rtol=1e-4)


def _batch(routing):
    from rollout.types import RolloutBatch

    return RolloutBatch(prompt_ids=PROMPTS, response_ids=RESPONSES, group_size=1, rewards=[1.0, 0.0, 1.0],
                        advantages=[1.0, -1.0, 0.5], routed_experts=routing)


def test_router_mismatch_own_sees_a_shifted_routing_that_the_plumbing_check_cannot(moe_policy):
    """A rollout routing rotated by one expert (a misaligned capture): replay ON still feeds the experts exactly
    what it was given (plumbing 0, by construction), but the training router's own top-k disagrees with it
    almost everywhere, and that is the figure reported. The router's own routing, replayed, disagrees nowhere."""
    own = _rows_routing(moe_policy, PROMPTS, RESPONSES)
    shifted = _rows_routing(moe_policy, PROMPTS, RESPONSES, shift=1)
    settings = dict(mini_batches=2, micro_batch_size=2, routing_replay=True)
    aligned = moe_policy.train_grpo(_batch(own), {**settings, "routing_replay": True})
    with_r3 = moe_policy.train_grpo(_batch(shifted), settings)
    without = moe_policy.train_grpo(_batch(shifted), {**settings, "routing_replay": False})
    assert aligned["router_mismatch_own"] < 0.01 and aligned["replay_plumbing_mismatch"] == 0.0
    assert with_r3["replay_plumbing_mismatch"] == 0.0 and with_r3["routing_coverage"] == 1.0
    assert with_r3["router_mismatch_own"] > 0.8 and with_r3["token_mismatch_own"] > 0.8
    assert without["router_mismatch_own"] > 0.8 and "replay_plumbing_mismatch" not in without
    assert without["token_mismatch_own"] >= without["router_mismatch_own"]


def test_routing_coverage_counts_known_pairs_over_the_scored_tokens_exactly():
    s = 255
    a = np.zeros((4, 2, 2), dtype=np.uint8)  # prompt 3 + response 2 - 1 = 4 tokens, 2 MoE layers: 8 pairs
    a[1] = s  # token 1 unknown in both layers
    a[2, 1] = s  # token 2 unknown in layer 1
    a[3, 0] = [s, 1]  # one id equal to the sentinel is an id, not "unknown"
    short = np.zeros((2, 2, 2), dtype=np.uint8)  # 4 tokens, 2 rows returned: the other 2 x 2 pairs unknown
    signed = np.full((3, 2, 2), -1, dtype=np.int64)  # the trainer's own -1 marker
    signed[0] = 0
    got = routing_coverage([a, None, short, signed], [3, 2, 2, 2], [2, 1, 3, 2], moe_layers=2)
    # known: 5 of 8, 0 of 4 (no routing), 4 of 8, 2 of 6
    assert got == pytest.approx((5 + 0 + 4 + 2) / (8 + 4 + 8 + 6))
    assert routing_coverage([np.zeros((6, 2, 2), np.uint8)], [3], [2], 2) == 1.0  # extra rows are not counted
    assert routing_coverage([None], [1], [0], 2) is None
    with pytest.raises(ValueError, match=r"expected \[tokens, 2, k\]"):
        routing_coverage([np.zeros((4, 3, 2), np.uint8)], [3], [2], 2)
    check_coverage(0.9, 0.9)  # at the minimum: accepted
    with pytest.raises(ValueError, match="rows_missing 7"):
        check_coverage(0.5, 0.9, {"rows_missing": 7})


def test_replay_with_no_known_routing_stops_before_the_update_in_one_line(moe_policy):
    """What an engine that returned no routed_experts hands over: every row the sentinel. Replay ON must refuse
    the step (not route every token itself and call it R3); replay OFF reports coverage 0 and trains."""
    unknown = [np.full((len(p) + len(r) - 1, 2, 2), 255, dtype=np.uint8) for p, r in zip(PROMPTS, RESPONSES)]
    batch = _batch(unknown)
    batch.routing_counts = {"rows_missing": 17, "rows_unknown": 17, "noncontiguous": 0}
    before = {k: v.clone() for k, v in moe_policy.model.state_dict().items()}
    with pytest.raises(ValueError) as refused:
        moe_policy.train_grpo(batch, {"routing_replay": True, "mini_batches": 2})
    message = str(refused.value)
    assert "\n" not in message and "rl.routing_min_coverage=0.9" in message and "0.0%" in message
    assert "routed_experts" in message and "rows_missing 17" in message
    assert moe_policy.optimizer_steps == 0
    assert all(torch.equal(before[k], v) for k, v in moe_policy.model.state_dict().items())
    out = moe_policy.train_grpo(batch, {"routing_replay": False})
    assert out["routing_coverage"] == 0.0 and "router_mismatch_own" not in out
    # a partly known batch above the minimum trains, and reports its coverage
    partial = _rows_routing(moe_policy, PROMPTS, RESPONSES)
    partial[2] = unknown[2]
    out = moe_policy.train_grpo(_batch(partial), {"routing_replay": True, "routing_min_coverage": 0.5})
    assert out["routing_coverage"] == pytest.approx((6 + 5) / (6 + 5 + 6))  # rows of 6, 5, 6 scored tokens


class DeepseekV2TopkRouter(torch.nn.Module):
    """A stand-in for a family whose gate rule is not known here (DeepSeek-V2: softmax, no renormalisation,
    times routed_scaling_factor): it has every attribute the old attribute sniffing looked at."""

    def __init__(self, experts: int, hidden: int) -> None:
        super().__init__()
        self.top_k, self.routed_scaling_factor = 2, 16.0
        self.weight = torch.nn.Parameter(torch.zeros(experts, hidden))


def test_a_router_family_without_a_known_gate_rule_is_refused_when_replay_is_turned_on():
    model = _tiny("mixtral")
    model.model.layers[1].mlp.gate = DeepseekV2TopkRouter(4, 32)
    replay = RoutingReplay(model)  # loading (SFT, or comparing routings) needs no gate weights
    routing = torch.zeros(1, 3, len(replay.blocks), replay.top_k, dtype=torch.long)
    replay.enabled = False
    replay.set(routing)  # compare only: allowed
    replay.clear()
    replay.enabled = True
    with pytest.raises(ValueError, match="router class DeepseekV2TopkRouter .*known families: MixtralTopKRouter"):
        replay.set(routing)
    with pytest.raises(ValueError, match="DeepseekV2TopkRouter"):
        replayed_weights(model.model.layers[1].mlp.gate, torch.zeros(3, 4), torch.zeros(3, 2, dtype=torch.long))


def test_routing_replay_on_a_dense_model_fails_in_one_line(tiny_model_dir):
    from rollout.types import RolloutBatch
    from trainer.policy import PolicyTrainer

    trainer = PolicyTrainer(tiny_model_dir)
    batch = RolloutBatch(prompt_ids=[[1, 2]], response_ids=[[3]], group_size=1, rewards=[1.0], advantages=[1.0])
    with pytest.raises(ValueError, match="no MoE layers"):
        trainer.train_grpo(batch, {"routing_replay": True})


def test_moe_weights_leave_under_the_names_vllm_loads_and_checkpoints_round_trip(moe_policy, tmp_path):
    state = moe_policy.inference_state_dict()
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in state
    assert not any("gate_up_proj" in k for k in state)
    moe_policy.save_checkpoint(tmp_path / "ckpt")
    before = {k: v.clone() for k, v in moe_policy.model.state_dict().items()}
    with torch.no_grad():
        for p in moe_policy.model.parameters():
            p.add_(1.0)
    moe_policy.load_checkpoint(tmp_path / "ckpt")
    after = moe_policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---- the MoE model that runs here ----------------------------------------------------------------------------

def test_upcycled_copies_reproduce_the_dense_model_and_noise_sets_experts_apart(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from pipeline.moe_model import expert_spread

    exact = upcycle_dir(tiny_model_dir, tmp_path / "exact", noise=0.0)
    noisy = upcycle_dir(tiny_model_dir, tmp_path / "noisy", noise=0.05)
    ids = torch.randint(0, 1000, (2, 12))
    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    moe = AutoModelForCausalLM.from_pretrained(exact).eval()
    with torch.no_grad():
        assert torch.allclose(moe(input_ids=ids).logits, dense(input_ids=ids).logits, atol=1e-5)
    assert moe.config.model_type == "mixtral" and moe.config.num_local_experts == 4
    assert expert_spread(moe) == 0.0
    assert 0.01 < expert_spread(AutoModelForCausalLM.from_pretrained(noisy)) < 0.1
    # routers are not all zero (zero logits would tie every expert)
    assert all(b.router.weight.abs().sum() > 0 for b in moe_blocks(moe))


def upcycle_dir(dense, out, noise):
    from trainer.moe_upcycle import upcycle

    return upcycle(dense, out, experts=4, top_k=2, noise=noise)


def test_engine_swap_refuses_another_expert_count(tiny_moe_dir, tiny_model_dir, tmp_path):
    from rollout.architecture import architecture_of, check_same_architecture
    from trainer.moe_upcycle import upcycle

    other = upcycle(tiny_model_dir, tmp_path / "eight", experts=8, top_k=2)
    with pytest.raises(ValueError, match="num_local_experts"):
        check_same_architecture(architecture_of(tiny_moe_dir), other)


def test_upcycle_refuses_bad_shapes(tiny_model_dir, tmp_path):
    from trainer.moe_upcycle import upcycle

    with pytest.raises(ValueError, match="top_k=5"):
        upcycle(tiny_model_dir, tmp_path / "x", experts=4, top_k=5)


def test_old_logprobs_are_recomputed_under_the_same_replayed_routing(tiny_moe_dir):
    """Two mini-batches: the old policy's logprobs are recomputed before the update. With a negligible
    learning rate the ratio new/old is 1 only if that recompute replayed the rollout's experts too."""
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    trainer = PolicyTrainer(tiny_moe_dir, TrainerSettings(precision="fp32", shared_prefix=False,
                                                          optim=OptimSettings(lr=1e-12)))
    batch = _batch(_rows_routing(trainer, PROMPTS, RESPONSES, shift=1))
    out = trainer.train_grpo(batch, {"mini_batches": 2, "micro_batch_size": 2, "routing_replay": True})
    assert out["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and out["approx_kl"] == pytest.approx(0.0, abs=1e-8)


def test_a_reference_pass_replays_even_after_a_compare_only_update(moe_policy):
    """``batch_logprobs(replay_routing=True)`` (the reference with rl.routing_replay_reference) replays whatever
    the last update did: a run without R3 leaves the hooks comparing, and that must not leak."""
    from rollout.types import RolloutBatch

    shifted = _rows_routing(moe_policy, PROMPTS, RESPONSES, shift=1)
    batch = RolloutBatch(prompt_ids=PROMPTS, response_ids=RESPONSES, group_size=1, rewards=[1.0, 0.0, 1.0],
                         advantages=[1.0, -1.0, 0.5], routed_experts=shifted)
    moe_policy.train_grpo(batch, {"routing_replay": False})
    plain = np.concatenate([np.array(r) for r in moe_policy.batch_logprobs(batch)])
    replayed = np.concatenate([np.array(r) for r in moe_policy.batch_logprobs(batch, replay_routing=True)])
    assert np.abs(replayed - plain).max() > 1e-3
