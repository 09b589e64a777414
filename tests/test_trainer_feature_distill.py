"""Feature distillation (distill.feature): the pure loss pieces, the DistillTrainer step with hidden-state
alignment on tiny random Llamas, its projection (optimizer, checkpoint, never exported), config and wiring."""
import json
import math

import pytest
import torch

from helpers import capture_step_gradients, tiny_llama_variant

from trainer.feature_distill import (FeatureProjection, FeatureSpec, hidden_state_loss, layer_pairs,
                                     proportional_layers)
from trainer.policy import PolicyTrainer
from trainer.settings import OptimSettings, TrainerSettings
from trainer.teacher_student import DistillTrainer

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [300, 301, 302, 303]]
TARGETS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [400, 401]]


def _settings(lr=1e-2, precision="fp32", eps=1e-8):
    return TrainerSettings(precision=precision, optim=OptimSettings(lr=lr, eps=eps))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_model_dir):
    """Same shape and vocabulary as the student (2 layers, width 32), other weights."""
    return tiny_llama_variant(tmp_path_factory, tiny_model_dir, "feat-teacher", seed=1)


@pytest.fixture(scope="module")
def wide_teacher_dir(tmp_path_factory, tiny_model_dir):
    """A wider, deeper teacher: 3 layers of width 48 (same vocabulary): the student needs a projection."""
    return tiny_llama_variant(tmp_path_factory, tiny_model_dir, "feat-wide-teacher", seed=2, hidden_size=48,
                 intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=12)


def _capture_grads(trainer):
    """The gradients (student and projection) each optimizer step is about to apply."""
    seen = []
    original = trainer._optimizer_step

    def step():
        named = list(trainer.model.named_parameters())
        if trainer.projection is not None:
            named += [(f"projection.{n}", p) for n, p in trainer.projection.named_parameters()]
        seen.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})
        return original()

    trainer._optimizer_step = step
    return seen


# ---- the pure pieces -----------------------------------------------------------------------------------------

def _reference_losses(s, t, mask, kind):
    """Per-token loss by plain loops in float64: the definitions, written out."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for b in range(s.shape[0]):
        for r in range(s.shape[1]):
            if not mask[b, r]:
                continue
            a, c = s[b, r].double().tolist(), t[b, r].double().tolist()
            if kind == "mse":
                out[b, r] = sum((x - y) ** 2 for x, y in zip(a, c)) / len(a)
            else:
                dot = sum(x * y for x, y in zip(a, c))
                out[b, r] = 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))
    return out


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_state_loss_matches_the_definition(kind):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 16, generator=gen) * 3
    t = torch.randn(3, 4, 16, generator=gen) * 5 + 1
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    got = hidden_state_loss(s, t, mask, kind)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference_losses(s, t, mask, kind), atol=1e-5, rtol=1e-5)
    # The two kinds are different numbers, and each is 0 for equal states.
    other = hidden_state_loss(s, t, mask, "cosine" if kind == "mse" else "mse")
    assert not torch.allclose(got[mask], other[mask])
    assert hidden_state_loss(s, s.clone(), mask, kind).abs().max() < 1e-5


def test_cosine_ignores_scale_mse_does_not():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 1, 3, 8, generator=gen)
    mask = torch.ones(1, 3, dtype=torch.bool)
    torch.testing.assert_close(hidden_state_loss(5 * s, t, mask, "cosine"), hidden_state_loss(s, t, mask, "cosine"))
    assert hidden_state_loss(7 * t, t, mask, "cosine").abs().max() < 1e-6  # same direction: no loss
    torch.testing.assert_close(hidden_state_loss(7 * t, t, mask, "mse"), 36 * t.pow(2).mean(-1))
    torch.testing.assert_close(hidden_state_loss(-t, t, mask, "cosine"), torch.full((1, 3), 2.0))


def test_masked_positions_with_inf_and_nan_give_zero_loss_and_gradient():
    gen = torch.Generator().manual_seed(2)
    clean_s, clean_t = torch.randn(2, 2, 4, 8, generator=gen)
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    dirty_s, dirty_t = clean_s.clone(), clean_t.clone()
    dirty_s[0, 2], dirty_s[1, 1, :3] = float("nan"), float("inf")
    dirty_t[0, 3], dirty_t[1, 3] = float("-inf"), float("nan")
    for kind in ("mse", "cosine"):
        got_s = dirty_s.clone().requires_grad_(True)
        loss = hidden_state_loss(got_s, dirty_t, mask, kind)
        assert torch.isfinite(loss).all() and (loss[~mask] == 0).all()
        loss.sum().backward()
        assert torch.isfinite(got_s.grad).all() and (got_s.grad[~mask] == 0).all()
        want_s = clean_s.clone().requires_grad_(True)
        want = hidden_state_loss(want_s, clean_t, mask, kind)
        want.sum().backward()
        torch.testing.assert_close(loss, want)
        torch.testing.assert_close(got_s.grad, want_s.grad)


def test_gradient_reaches_student_and_projection_not_teacher():
    gen = torch.Generator().manual_seed(3)
    proj = FeatureProjection(2, 8, 12)
    student = torch.randn(2, 3, 8, generator=gen, requires_grad=True)
    teacher = torch.randn(2, 3, 12, generator=gen, requires_grad=True)  # as if a caller forgot no_grad
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    for kind in ("mse", "cosine"):
        proj.zero_grad()
        student.grad = None
        hidden_state_loss(proj(student, 1), teacher, mask, kind).sum().backward()
        assert teacher.grad is None
        assert student.grad.abs().sum() > 0 and (student.grad[0, 2] == 0).all()
        assert proj.maps[1].weight.grad.abs().sum() > 0
        assert proj.maps[0].weight.grad is None  # each compared layer has its own map


def test_projection_shapes_and_identity_start():
    x = torch.randn(2, 5, 8)
    same = FeatureProjection(3, 8, 8)
    assert same.is_identity and not list(same.parameters())
    assert same(x, 0) is x
    forced = FeatureProjection(3, 8, 8, project=True)
    assert not forced.is_identity and len(list(forced.parameters())) == 3
    torch.testing.assert_close(forced(x, 2), x)  # starts as the identity
    wider = FeatureProjection(2, 8, 12)
    assert wider(x, 1).shape == (2, 5, 12)
    torch.testing.assert_close(wider(x, 1)[..., :8], x)  # the shared dimensions copied, the rest 0
    assert (wider(x, 1)[..., 8:] == 0).all()
    assert FeatureProjection(2, 12, 8)(torch.randn(2, 5, 12), 0).shape == (2, 5, 8)


def test_hidden_state_loss_rejects_bad_arguments():
    h = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="distill.feature.loss='l1'"):
        hidden_state_loss(h, h, torch.ones(1, 2), "l1")
    with pytest.raises(ValueError, match="project"):
        hidden_state_loss(h, torch.zeros(1, 2, 5), torch.ones(1, 2))
    with pytest.raises(ValueError, match="mask"):
        hidden_state_loss(h, h, torch.ones(1, 3))


def test_layer_map_proportional_and_checked():
    # Halves round up (Python's round() would send 22.5 to 22); the ends map to the ends.
    assert proportional_layers([0, 4, 8, 12, 16], 16, 30) == [0, 8, 15, 23, 30]
    assert proportional_layers([1, 2], 2, 3) == [2, 3]
    assert layer_pairs([1, 2], None, 2, 3) == [(1, 2), (2, 3)]
    assert layer_pairs([2, 1], [0, 3], 2, 3) == [(2, 0), (1, 3)]
    for args, field in ((([3], None, 2, 5), r"student_layers=\[3\]"), (([1], [6], 2, 5), r"teacher_layers=\[6\]"),
                        (([1, 2], [1], 2, 5), "teacher_layers: 1 entries for 2"),
                        (([], None, 2, 5), "student_layers: empty")):
        with pytest.raises(ValueError, match=f"distill.feature.{field}") as err:
            layer_pairs(*args)
        assert "\n" not in str(err.value)
    assert layer_pairs([0, 2], [5, 0], 2, 5) == [(0, 5), (2, 0)]  # both ends are in range
    with pytest.raises(ValueError, match="distill.feature.loss"):
        FeatureSpec(weight=1.0, loss="l2", student_layers=[1])


# ---- the DistillTrainer step ---------------------------------------------------------------------------------

def _feature(weight=1.0, kind="mse", layers=(1, 2), teacher_layers=None, project=False):
    return {"weight": weight, "loss": kind, "student_layers": list(layers), "teacher_layers": teacher_layers,
            "project": project}


def _reference_feature_loss(student, teacher, pairs, kind):
    """The feature loss of the batch, token-mean, from whole unpadded rows: each row's own forward pass,
    the hidden states at the positions that predict its target tokens (len(prompt) - 1 ...)."""
    total, tokens = 0.0, 0
    for prompt, target in zip(PROMPTS, TARGETS):
        ids = torch.tensor([prompt + target])
        hs = student(ids, output_hidden_states=True).hidden_states
        with torch.no_grad():
            ht = teacher(ids, output_hidden_states=True).hidden_states
        cols = slice(len(prompt) - 1, len(prompt) + len(target) - 1)
        per_layer = [hidden_state_loss(hs[i][:, cols], ht[j][:, cols], torch.ones(1, len(target)), kind)
                     for i, j in pairs]
        total = total + sum(per_layer).sum() / len(pairs)
        tokens += len(target)
    return total / tokens


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_step_gradient_is_ce_plus_weight_times_the_reference_feature_gradient(tiny_model_dir, teacher_dir,
                                                                                      kind):
    from transformers import AutoModelForCausalLM

    weight = 0.7
    sft = PolicyTrainer(tiny_model_dir, _settings())
    ce_grads = capture_step_gradients(sft)
    sft.train_sft(PROMPTS, TARGETS, micro_batch_size=2)
    trainer = DistillTrainer(tiny_model_dir, _settings(), teacher_dir, _feature(weight, kind, layers=(0, 1, 2),
                                                                               teacher_layers=[2, 1, 2]))
    assert trainer.projection.is_identity  # equal widths, no project: no parameters
    seen = _capture_grads(trainer)
    metrics = trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0, micro_batch_size=2)
    # The reference: the same loss from whole rows, one by one, by autograd on a fresh copy of the student.
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    ref = _reference_feature_loss(student, teacher, [(0, 2), (1, 1), (2, 2)], kind)
    ref.backward()
    assert metrics["feature"] == pytest.approx(float(ref.detach()), rel=1e-5)
    assert metrics["feature"] > 1e-3
    assert metrics["loss"] == pytest.approx(metrics["ce"] + weight * metrics["feature"], rel=1e-6)
    for name, p in student.named_parameters():
        want = ce_grads[0][name] + weight * (p.grad if p.grad is not None else torch.zeros_like(p))
        torch.testing.assert_close(seen[0][name], want, atol=1e-6, rtol=1e-4, msg=name)


def test_feature_weight_changes_the_step_and_steps_reduce_the_feature_loss(tiny_model_dir, teacher_dir):
    off = DistillTrainer(tiny_model_dir, _settings(), teacher_dir, _feature(weight=0.0))
    on = DistillTrainer(tiny_model_dir, _settings(), teacher_dir, _feature(weight=1.0))
    m_off = off.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0, micro_batch_size=2)
    assert "feature" not in m_off and not off.feature_pairs  # weight 0: off, no hidden states asked for
    history = [on.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0, micro_batch_size=2) for _ in range(5)]
    assert history[0]["ce"] == pytest.approx(m_off["ce"], rel=1e-6)  # the same start, the same CE
    moved = [float((p - q).detach().abs().max()) for p, q in zip(on.model.parameters(), off.model.parameters())]
    assert max(moved) > 1e-3
    feats = [m["feature"] for m in history]  # each measured before its step, on the same batch
    assert feats[0] > 1e-3
    assert feats[-1] < 0.7 * feats[0], feats
    # The teacher is frozen: never a gradient, never a change.
    assert all(p.grad is None for p in on.teacher.model.parameters())


def test_different_widths_train_the_projection(tiny_model_dir, wide_teacher_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, _feature(kind="cosine", layers=(1, 2)))
    assert trainer.feature_pairs == [(1, 2), (2, 3)]  # the proportional map, 2 -> 3 layers
    assert not trainer.projection.is_identity
    maps = list(trainer.projection.maps)
    assert [tuple(m.weight.shape) for m in maps] == [(48, 32), (48, 32)]
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(m.weight) in in_optimizer for m in maps)
    assert trainer.optimizer.param_groups[1]["lr"] == trainer.optimizer.param_groups[0]["lr"]  # same schedule
    before = [m.weight.detach().clone() for m in maps]
    seen = _capture_grads(trainer)
    m = trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0)
    assert math.isfinite(m["feature"]) and m["feature"] > 0
    assert seen[0]["projection.maps.0.weight"].abs().sum() > 0
    # The reported (and clipped) gradient norm is over everything the optimizer trains, the projection included.
    total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in seen[0].values()))
    student_only = math.sqrt(sum(float(g.double().pow(2).sum()) for n, g in seen[0].items()
                                 if not n.startswith("projection.")))
    assert m["grad_norm"] == pytest.approx(total, rel=1e-5)
    assert total > student_only * (1 + 1e-4)
    assert all(not torch.equal(m.weight, b) for m, b in zip(maps, before))
    assert trainer.feature_pairs and trainer.teacher.model.config.hidden_size == 48


def test_bf16_feature_step_is_finite(tiny_model_dir, wide_teacher_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(precision="bf16"), wide_teacher_dir,
                             _feature(kind="mse", layers=(2,)))
    m = trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.5, temperature=2.0)
    assert all(math.isfinite(v) for v in m.values()), m
    assert m["loss"] == pytest.approx(0.5 * m["ce"] + 0.5 * 4.0 * m["kl"] + m["feature"], rel=1e-5)


def test_out_of_range_layers_raise_one_line(tiny_model_dir, wide_teacher_dir):
    with pytest.raises(ValueError, match=r"distill.feature.student_layers=\[3\]: \[3\] out of range; the student "
                                         r"has 2 layers"):
        DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, _feature(layers=(3,)))
    with pytest.raises(ValueError, match=r"distill.feature.teacher_layers=\[4\]: \[4\] out of range; the teacher "
                                         r"has 3 layers"):
        DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, _feature(layers=(1,), teacher_layers=[4]))


# ---- checkpoints and export ----------------------------------------------------------------------------------

def test_checkpoint_round_trips_the_projection_and_resumes_identically(tiny_model_dir, wide_teacher_dir, tmp_path):
    feature = _feature(kind="mse", layers=(1, 2))
    first = DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, feature)
    for _ in range(2):
        first.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0)
    ckpt = first.save_checkpoint(tmp_path / "ckpt", {"step": 2})
    assert (tmp_path / "ckpt" / "feature_projection.pt").is_file()
    resumed = DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, feature)
    resumed.load_checkpoint(ckpt)
    for a, b in zip(first.projection.parameters(), resumed.projection.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(resumed.projection.maps[0].weight[:32], torch.eye(32))  # it had moved: not the init
    # Adam's moments of the projection came back too: the next step is the same on both.
    for t in (first, resumed):
        t.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0)
    for a, b in zip(first.projection.parameters(), resumed.projection.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    for a, b in zip(first.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    # A checkpoint without the projection (another config) is refused in one line.
    (tmp_path / "ckpt" / "feature_projection.pt").unlink()
    with pytest.raises(RuntimeError, match="no feature_projection.pt"):
        DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, feature).load_checkpoint(ckpt)


def test_exported_student_has_no_projection_weights(tiny_model_dir, wide_teacher_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    trainer = DistillTrainer(tiny_model_dir, _settings(), wide_teacher_dir, _feature(layers=(1, 2), project=True))
    trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0)
    plain = PolicyTrainer(tiny_model_dir, _settings())
    assert set(trainer.inference_state_dict()) == set(plain.inference_state_dict())
    out = trainer.save_pretrained(tmp_path / "student")
    with safe_open(f"{out}/model.safetensors", "pt") as fh:
        names = set(fh.keys())
    with safe_open(f"{tiny_model_dir}/model.safetensors", "pt") as fh:
        assert names == set(fh.keys())
    assert not any("proj" in n and "maps" in n for n in names)
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert json.loads((tmp_path / "student" / "config.json").read_text())["hidden_size"] == 32


# ---- config, fingerprint, wiring -----------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("distill.feature.weight=1.0", "config error: distill.feature: weight=1.0 with student_layers=[]"),
    ("distill.feature.loss=l1", "config error: distill.feature.loss='l1': expected 'mse' or 'cosine'"),
    ("distill.feature.student_layers=[-1]", "config error: distill.feature.student_layers=[-1]: "),
    ("distill.feature.weight=-1", "config error: distill.feature.weight=-1"),
    ("distill.feature.colour=red", "config error: unknown key 'distill.feature.colour'"),
])
def test_config_errors_are_one_line_naming_the_field(override, needle):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(needle), str(err.value)
    assert "\n" not in str(err.value)


def test_config_teacher_layers_length_and_defaults():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="teacher_layers has 1 entries for 2 student_layers"):
        load_config(None, ["distill.feature.weight=0.5", "distill.feature.student_layers=[4,8]",
                           "distill.feature.teacher_layers=[4]"])
    cfg = load_config(None, ["distill.feature.weight=0.5", "distill.feature.student_layers=[4,8]",
                             "distill.feature.loss=cosine"])
    f = cfg.distill.feature
    assert (f.weight, f.loss, f.student_layers, f.teacher_layers, f.project) == (0.5, "cosine", [4, 8], None, False)
    assert load_config(None).distill.feature.weight == 0.0  # off by default


def test_distill_fingerprint_reads_the_feature_block(tmp_path):
    from pipeline.config import load_config
    from pipeline.fingerprints import training_fingerprint
    from pipeline.recipe import STAGES

    stage = next(s for s in STAGES if s.name == "distill")
    fp = lambda *o: training_fingerprint(load_config(None, [f"run.output_dir={tmp_path}", *o]), stage, {})  # noqa: E731
    base = fp()
    on = fp("distill.feature.weight=0.5", "distill.feature.student_layers=[4,8]")
    assert on != base
    assert fp("distill.feature.weight=0.5", "distill.feature.student_layers=[4,12]") != on
    assert fp("distill.feature.weight=0.5", "distill.feature.student_layers=[4,8]") == on


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_run_distill_passes_the_teacher_and_feature_to_the_sft(tmp_path, monkeypatch, tiny_model_dir, teacher_dir,
                                                               weight):
    import pipeline.sft
    from pipeline.config import load_config
    from pipeline.distill import run_distill

    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"distill.student={tiny_model_dir}",
                             f"distill.teacher={teacher_dir}", f"distill.feature.weight={weight}",
                             "distill.feature.student_layers=[1,2]"])
    data = tmp_path / "out" / "teacher_data"
    data.mkdir(parents=True)
    (data / "stats.json").write_text(json.dumps({"rows": 1, "acceptance": {},  # the teacher's data is done
                                                 "tokens": {"prompt_tokens": 9, "generated_tokens": 3}}))
    (data / "data.jsonl").write_text(json.dumps({"id": "a", "messages": [
        {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}) + "\n")
    calls = []
    monkeypatch.setattr(pipeline.sft, "run_sft", lambda *a, **kw: calls.append(kw) or {"model": "m"})
    run_distill(cfg, out=str(tmp_path / "out"))
    (kw,) = calls
    if weight:
        assert kw["teacher"] == teacher_dir
        assert kw["feature"] == {"weight": 0.5, "loss": "mse", "student_layers": [1, 2], "teacher_layers": None,
                                 "project": False}
    else:  # plain SFT on the teacher's samples: no teacher in the trainer
        assert kw["teacher"] is None and kw["feature"] is None
    bad = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={
        "feature": cfg.distill.feature.model_copy(update={"weight": 0.5, "student_layers": [7]})})})
    with pytest.raises(ValueError, match=r"distill.feature.student_layers=\[7\]: \[7\] out of range"):
        run_distill(bad, out=str(tmp_path / "out"))
