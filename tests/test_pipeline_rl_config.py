"""The RL / trainer / cluster config sections: defaults, one-line errors, and what reaches the trainer."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.rl import grpo_settings
from pipeline.cluster import rl_trainer_settings, trainer_settings


def test_rl_defaults_and_overrides_reach_the_trainer_settings():
    cfg = load_config("configs/grpo_demo.yaml", ["rl.loss_agg=seq-mean-token-mean", "rl.ratio_level=sequence",
                                                 "rl.kl_coef=0.01", "trainer.lora.enabled=true",
                                                 "trainer.optim.schedule=cosine", "rl.tis_cap=null"])
    g = grpo_settings(cfg)
    assert (g.loss_agg, g.ratio_level, g.kl_coef, g.tis_cap) == ("seq-mean-token-mean", "sequence", 0.01, None)
    assert g.temperature == cfg.rl.sampling.temperature and g.micro_batch_size == cfg.trainer.micro_batch_size
    t = trainer_settings(cfg, total_optimizer_steps=40)
    assert t.lora is not None and t.lora.rank == 16 and t.optim.total_steps == 40 and t.precision == "bf16"
    assert trainer_settings(load_config(None), 40).optim.total_steps is None  # constant schedule by default


def test_rl_lr_is_the_reasoning_rl_rate_and_general_rl_keeps_the_trainer_rate():
    from pipeline.distill import student_rl_job
    from pipeline.rl import general_rl_job

    cfg = load_config("configs/quickstart.yaml",
                      ["rl.optim.lr=3e-5", "trainer.optim.lr=1e-5", "general_rl.optim.lr=null"])
    assert rl_trainer_settings(cfg).optim.lr == 3e-5
    # the RL-only student: reasoning RL's knobs
    assert rl_trainer_settings(cfg, student_rl_job(cfg).section).optim.lr == 3e-5
    assert rl_trainer_settings(cfg, general_rl_job(cfg).section).optim.lr == 1e-5
    cfg = load_config("configs/quickstart.yaml", ["general_rl.optim.lr=4e-5"])
    assert rl_trainer_settings(cfg, general_rl_job(cfg).section).optim.lr == 4e-5
    assert grpo_settings(load_config("configs/quickstart.yaml", ["rl.skip_zero_advantage=false"])).skip_zero_advantage is False


@pytest.mark.parametrize("override, message", [
    ("rl.kl_coeff=0.1", "unknown key 'rl.kl_coeff'"),
    ("rl.loss_agg=mean", "rl.loss_agg='mean': expected"),
    ("rl.mini_batches=1000", "mini_batches=1000 exceeds"),
    ("rl.group_size=0", "rl.group_size=0"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("cluster.rollout.num_gpus=-1", "cluster.rollout.num_gpus=-1"),
    ("rl.optim.lr=-1", "rl.optim: lr=-1.0: Input should be greater than 0"),  # a stage block checks at load time
    ("eval.sampling.top_p=2", "eval.sampling: top_p=2.0"),
    ("general_rl.sampling.temperature=0", "general_rl.sampling.temperature=0.0: GRPO divides"),
])
def test_bad_rl_settings_fail_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/quickstart.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)


# Every stage block of the config, by its dotted path: (optim or sampling block, the run-wide section).
STAGE_BLOCKS = [("cold_start.optim", "trainer.optim"), ("sft.optim", "trainer.optim"), ("rl.optim", "trainer.optim"),
                ("general_rl.optim", "trainer.optim"), ("reward_model.optim", "trainer.optim"),
                ("distill.optim", "trainer.optim"), ("distill.on_policy.optim", "trainer.optim"),
                ("rl.sampling", "rollout"), ("general_rl.sampling", "rollout"), ("rejection.sampling", "rollout"),
                ("eval.sampling", "rollout"), ("distill.sampling", "rollout"), ("distill.on_policy.sampling", "rollout")]


def _at(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_every_stage_block_resolves_by_the_one_precedence_rule():
    """For every optim / sampling block: a field the stage sets wins, a null one takes the run-wide value."""
    from pipeline.config import OptimBlock, SamplingBlock, RecipeConfig, resolve

    blocks = {dotted for dotted, _ in STAGE_BLOCKS}
    found = set()

    def walk(model, prefix):  # every block the config has must be in the table above
        for name, field in model.model_fields.items():
            kind = field.annotation
            if kind in (OptimBlock, SamplingBlock):
                found.add(f"{prefix}{name}")
            elif isinstance(kind, type) and hasattr(kind, "model_fields"):
                walk(kind, f"{prefix}{name}.")
    walk(RecipeConfig, "")
    assert found == blocks
    for dotted, run_wide in STAGE_BLOCKS:
        knob = "lr" if dotted.endswith("optim") else "temperature"
        other = "grad_clip" if knob == "lr" else "max_new_tokens"
        # The stage leaves the field null: the run-wide value decides.
        cfg = load_config(None, [f"{dotted}.{knob}=null", f"{run_wide}.{knob}=0.123", f"{run_wide}.{other}=7"])
        resolved = resolve(_at(cfg, dotted), _at(cfg, run_wide))
        assert getattr(resolved, knob) == 0.123 and getattr(resolved, other) == 7, dotted
        # The stage sets it: the stage's value wins, the other fields still come from the run-wide section.
        cfg = load_config(None, [f"{dotted}.{knob}=0.456", f"{run_wide}.{knob}=0.123", f"{run_wide}.{other}=7"])
        resolved = resolve(_at(cfg, dotted), _at(cfg, run_wide))
        assert getattr(resolved, knob) == 0.456 and getattr(resolved, other) == 7, dotted


@pytest.mark.parametrize("old, new", [("rl.lr", "rl.optim.lr"), ("eval.temperature", "eval.sampling.temperature"),
                                      ("general_rl.max_new_tokens", "general_rl.sampling.max_new_tokens"),
                                      ("distill.on_policy_lr", "distill.on_policy.optim.lr")])
def test_a_moved_key_is_refused_in_one_line_naming_its_new_key(old, new):
    with pytest.raises(ConfigError, match=f"'{old}' is now '{new}'") as err:
        load_config(None, [f"{old}=0.5"])
    assert "\n" not in str(err.value)
