"""Reward shaping for tool-using episodes: a per-turn penalty, a failed-call penalty, a format reward.

These are added to the episode's reward on top of the run's reward functions, which score the final
answer (the built-in `accuracy` checks it with math-verify). All default to 0: reward only the answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shaping:
    turn_penalty: float = 0.0  # subtracted for every tool-calling turn
    failed_call_penalty: float = 0.0  # subtracted for every malformed, unknown, invalid or failed call
    format_reward: float = 0.0  # added for every well-formed call of a known tool with valid arguments

    def step_reward(self, calls: int, failed: int) -> float:
        """Reward of one model turn that made `calls` tool calls, `failed` of which failed."""
        if calls == 0:
            return 0.0
        well_formed = calls - failed
        return -self.turn_penalty - self.failed_call_penalty * failed + self.format_reward * well_formed
