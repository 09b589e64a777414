"""The RL loop with a trainer group killed during a checkpoint save (DCP: every rank writes its shards):
the death is told as the trainer's, a new group resumes from the previous checkpoint, and the run matches
an uninterrupted one (tests/test_rl_faults.py's tiny run and baseline)."""
import logging

import pytest

from tests.test_rl_faults import _assert_same_run, _fired, _run, baseline  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


def test_a_trainer_killed_during_a_save_resumes_from_the_previous_checkpoint(baseline, tiny_model_dir,  # noqa: F811
                                                                              tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="r1")
    stage = _run(tiny_model_dir, tmp_path, "cluster.trainer_workers=2", "cluster.faults=['trainer:save_checkpoint:2:kill']")
    assert _fired(stage) == ["trainer_save_checkpoint_2_kill"]  # one rank of the two died, in step 2's save
    died = [r.getMessage() for r in caplog.records if "died during" in r.getMessage()]
    assert len(died) == 1 and "of 2) died during save_checkpoint" in died[0], died  # named: rank r (of 2)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed reasoning_rl from")]
    assert len(resumed) == 1 and "step_00001 (step 1;" in resumed[0], resumed
    _assert_same_run(stage, baseline, atol=1e-4)  # gradients all-reduced over 2 workers: another summation order
