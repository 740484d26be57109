"""The no-signal warning: GRPO learns nothing while every group scores alike, and the run should say so."""

import pytest

from lazarus.observe.signal import NoSignalMonitor, zero_std_group_fraction


def test_zero_std_group_fraction_counts_groups_whose_rewards_are_all_equal():
    # given: three groups of 4: all 0, mixed, all 1
    rewards = [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    # when / then
    assert zero_std_group_fraction(rewards, 4) == pytest.approx(2 / 3)
    assert zero_std_group_fraction([0.5, 0.5], 2) == 1.0
    with pytest.raises(ValueError, match="group_size=4"):
        zero_std_group_fraction([0, 1, 0], 4)


def test_no_signal_warning_fires_after_k_flat_steps_and_not_before():
    # given: patience 5
    monitor = NoSignalMonitor(patience=5)
    # when: four steps on which every group scored alike
    early = [monitor.update(step, 1.0, reward_mean=0.0) for step in range(1, 5)]
    # then: nothing yet; the fifth step warns, naming the likely causes
    assert early == [None] * 4
    warning = monitor.update(5, 1.0, reward_mean=0.0)
    assert warning is not None and warning.startswith("step 5: no learning signal")
    for cause in ("reward never fires", "temperature", "num_generations"):
        assert cause in warning
    # and: only once
    assert [monitor.update(step, 1.0) for step in range(6, 20)] == [None] * 14


def test_a_step_with_signal_resets_the_count():
    # given: four flat steps, then one where some group's rewards differ
    monitor = NoSignalMonitor(patience=5)
    for step in range(1, 5):
        monitor.update(step, 1.0)
    assert monitor.update(5, 0.75) is None
    # when: four more flat steps / then: still no warning; the fifth in a row warns
    assert [monitor.update(step, 1.0) for step in range(6, 10)] == [None] * 4
    assert monitor.update(10, 1.0) is not None


def test_patience_must_be_positive():
    with pytest.raises(ValueError, match="rl.no_signal_steps"):
        NoSignalMonitor(patience=0)
