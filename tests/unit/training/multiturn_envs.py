"""A multi-turn env for the PPO tests (loaded by name, `env.name: multiturn_envs:rounds`)."""

from lazarus.env.protocol import Observation, StepResult

#: env reward of steps 1, 2, 3, 4
STEP_REWARDS = [0.25, -0.5, 1.0, 0.75]


class Rounds:
    """Two rounds of two turns in one conversation: round 1 ends after step 2 (`episode_end`), the
    conversation (round 2) after step 4 (done). Step k earns STEP_REWARDS[k - 1]."""

    def __init__(self):
        self.steps = 0

    def reset(self, task):
        return Observation()

    def step(self, action_text):
        self.steps += 1
        done = self.steps >= 4
        message = [] if done else [{"role": "tool", "content": f"round {1 + self.steps // 2}"}]
        return StepResult(Observation(message), STEP_REWARDS[self.steps - 1], done, {"episode_end": self.steps == 2})


def rounds(settings, toolbox):
    return Rounds()
