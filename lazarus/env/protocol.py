"""The environment protocol: `Env.reset(task) -> Observation`, `Env.step(action_text) -> StepResult`.

Envs speak text (chat messages); the rollout speaks tokens: it renders each observation with the
tokenizer's chat template exactly once and appends the ids to the episode (loss mask 0). A single-turn
reward function is the trivial env (`RewardEnv`: one step, done, reward = the functions' weighted sum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Observation:
    """What the env says: chat messages to append (`role` user/tool/system, `content` text).

    From `reset`, `messages` are the opening conversation (the task prompt) and `tools` the JSON schemas the
    prompt should describe; an empty `messages` means "use the task's own prompt ids as given".
    """

    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None


@dataclass
class StepResult:
    observation: Observation
    reward: float  # this step's reward (shaping); the final answer is scored by the run's reward functions
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    def reset(self, task: dict) -> Observation:
        """Start an episode for one dataset row (`prompt` plus reward columns such as `answer`)."""

    def step(self, action_text: str) -> StepResult:
        """The model's turn as text (EOS removed) -> the env's answer."""


class RewardEnv:
    """The trivial env: one step, scored by TRL-signature reward functions, then done."""

    def __init__(self, reward_functions: list):
        self.reward_functions = reward_functions
        self.row: dict = {}

    def reset(self, task: dict) -> Observation:
        self.row = task
        return Observation()

    def step(self, action_text: str) -> StepResult:
        from lazarus.env.rewards import score

        total, components = score(self.reward_functions, [self.row.get("prompt")], [action_text], [[]], [self.row])
        return StepResult(Observation(), float(total[0]), True,
                          {"reward_components": {k: float(v[0]) for k, v in components.items()}})
