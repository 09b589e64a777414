"""The RL / trainer / cluster config sections: defaults, one-line errors, and what reaches the trainer."""
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.rl import grpo_settings
from pipeline.cluster import rl_trainer_settings, trainer_settings


def test_rl_defaults_and_overrides_reach_the_trainer_settings():
    cfg = load_config("configs/grpo_demo.yaml", ["rl.loss_agg=seq-mean-token-sum-norm", "rl.ratio_level=sequence",
                                                 "rl.kl_coef=0.01", "trainer.lora.enabled=true",
                                                 "trainer.optim.schedule=cosine", "rl.tis_cap=null"])
    g = grpo_settings(cfg)
    assert (g.loss_agg, g.ratio_level, g.kl_coef, g.tis_cap) == ("seq-mean-token-sum-norm", "sequence", 0.01, None)
    assert g.temperature == cfg.rl.temperature and g.micro_batch_size == cfg.trainer.micro_batch_size
    t = trainer_settings(cfg, total_optimizer_steps=40)
    assert t.lora is not None and t.lora.rank == 16 and t.optim.total_steps == 40 and t.precision == "bf16"
    assert trainer_settings(load_config(None), 40).optim.total_steps is None  # constant schedule by default


def test_rl_lr_is_the_reasoning_rl_rate_and_general_rl_keeps_the_trainer_rate():
    from pipeline.distill import student_rl_config
    from pipeline.rl import general_rl_config

    cfg = load_config("configs/quickstart.yaml", ["rl.lr=3e-5", "trainer.optim.lr=1e-5", "general_rl.lr=null"])
    assert rl_trainer_settings(cfg).optim.lr == 3e-5
    assert rl_trainer_settings(student_rl_config(cfg)).optim.lr == 3e-5  # the RL-only student: reasoning RL's knobs
    assert rl_trainer_settings(general_rl_config(cfg)).optim.lr == 1e-5
    assert rl_trainer_settings(general_rl_config(load_config("configs/quickstart.yaml", [
        "general_rl.lr=4e-5"]))).optim.lr == 4e-5
    assert grpo_settings(load_config("configs/quickstart.yaml", ["rl.skip_zero_advantage=false"])).skip_zero_advantage is False


@pytest.mark.parametrize("override, message", [
    ("rl.kl_coeff=0.1", "unknown key 'rl.kl_coeff'"),
    ("rl.loss_agg=mean", "rl.loss_agg='mean': expected"),
    ("rl.mini_batches=1000", "mini_batches=1000 exceeds"),
    ("rl.group_size=0", "rl.group_size=0"),
    ("trainer.precision=fp8", "trainer.precision='fp8'"),
    ("cluster.rollout.num_gpus=-1", "cluster.rollout.num_gpus=-1"),
])
def test_bad_rl_settings_fail_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("configs/quickstart.yaml", [override])
    assert message in str(info.value) and "\n" not in str(info.value)
