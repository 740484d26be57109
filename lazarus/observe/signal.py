"""Say when nothing is being learned: GRPO's gradient is zero when every group scored alike.

Group-relative advantages are each completion's reward minus its group's mean, so a group whose
completions all got the same reward contributes nothing, and a batch of such groups skips the update.
A run can do that for its whole length and still look healthy (loss 0, steady reward). The learner
feeds `NoSignalMonitor.update` the fraction of groups with zero reward spread each step; after
`patience` such steps in a row it returns a warning, once, for the progress line and the log.
"""

from __future__ import annotations

import numpy as np

WARNING = ("no learning signal: every group has scored alike for {steps} steps in a row (rewards all "
           "{value}), so every advantage is 0 and no update is made. Likely causes: the reward never fires "
           "(check completions with `lazarus eval --show 5`: is the answer format what the reward reads?), "
           "the sampling temperature is too low for completions to differ, or groups are too small "
           "(generation.num_generations).")


def zero_std_group_fraction(rewards, group_size: int) -> float:
    """Fraction of groups (consecutive runs of `group_size` rewards) whose rewards are all equal."""
    rewards = np.asarray(rewards, np.float64).reshape(-1)
    if group_size <= 0 or rewards.size % group_size:
        raise ValueError(f"{rewards.size} rewards do not split into groups of group_size={group_size}")
    if rewards.size == 0:
        return 1.0
    groups = rewards.reshape(-1, group_size)
    return float(np.mean(np.ptp(groups, axis=1) == 0))


class NoSignalMonitor:
    """Counts consecutive steps on which every group scored alike; warns once after `patience` of them."""

    def __init__(self, patience: int = 5):
        if patience < 1:
            raise ValueError(f"patience (rl.no_signal_steps) must be >= 1, got {patience}")
        self.patience = patience
        self.streak = 0
        self.warned = False

    def update(self, step: int, zero_std_fraction: float, reward_mean: float | None = None) -> str | None:
        """Record `step`; the warning text on the step that completes the streak, else None.

        `zero_std_fraction` is `zero_std_group_fraction` of the step's rewards; `reward_mean` (optional)
        is shown in the text, since all-0 and all-1 rewards call for different fixes.
        """
        if zero_std_fraction < 1.0:
            self.streak = 0
            return None
        self.streak += 1
        if self.warned or self.streak < self.patience:
            return None
        self.warned = True
        value = "unknown" if reward_mean is None else f"{reward_mean:g}"
        return f"step {step}: " + WARNING.format(steps=self.streak, value=value)
