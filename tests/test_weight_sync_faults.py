"""An engine that dies during a weight sync is an engine's death: it is replaced and synced, the trainer is
kept (issue 24, finding 8). End to end through `r1 reasoning-rl` with the broadcast route (gloo on CPU, the
NCCL route's code), two engines, one killed as step 2's sync starts; compared with the uninterrupted run of
tests/test_rl_faults.py."""
import logging

import pytest

from tests.test_rl_faults import _assert_same_run, _fired, _run, baseline  # noqa: F401 -- baseline: a fixture

pytestmark = pytest.mark.slow


def test_an_engine_killed_during_a_broadcast_is_replaced_and_the_trainer_kept(baseline, tiny_model_dir,  # noqa: F811
                                                                                tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    stage = _run(tiny_model_dir, tmp_path, "cluster.weight_sync=broadcast", "cluster.rollout_engines=2",
                 "cluster.faults=['rollout:receive_weights:2:kill']")
    assert _fired(stage) == ["rollout_receive_weights_2_kill"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("died during broadcast; the trainer is kept" in m for m in warnings), warnings
    assert any("died during weight sync; starting a replacement" in m for m in warnings), warnings
    assert not any("the trainer died" in m for m in warnings), warnings  # no restart from the checkpoint
    _assert_same_run(stage, baseline)
