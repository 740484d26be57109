"""`Projectile-v0`: aim a projectile at a target under drag and wind, a Gymnasium env the project ships.

The expert chooses a launch angle; the shell leaves at `speed` m/s and flies under gravity, linear drag
(rate `drag` 1/s) and a horizontal wind (m/s, positive blows toward the target). With linear drag the
flight has a closed form (for k = drag, w = wind):

    x(t) = w t + (vx0 - w) (1 - e^{-kt}) / k
    y(t) = -(g/k) t + (vy0 + g/k) (1 - e^{-kt}) / k

and the landing time solves y(t) = 0 (Newton from the drag-free flight time, which bounds it above).

An episode is up to `max_shots` shots at one target. The observation is [target / 50, wind / 5, last
miss / 50, shots fired / max_shots]: after a miss the expert sees by how much (and which way) it missed,
and a recurrent expert can correct its next shot. A shot landing within `hit_radius` m of the target
scores 1 and ends the episode; a miss scores -|miss| / 50.

A task is `{"target_distance": metres, "wind": m/s}` (`TASK_SCHEMA`), passed as
`reset(options=task)`; each step's info holds the shot: launch angle, landing distance, miss, hit. This
is the shape an LLM tool call maps onto ("what launch angle hits a target at 37 m with this wind?").
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from lazarus.errors import LazarusError

GRAVITY = 9.81
TARGET_SCALE, WIND_SCALE = 50.0, 5.0

TASK_SCHEMA = {
    "type": "object",
    "properties": {
        "target_distance": {
            "type": "number", "minimum": 20, "maximum": 45,
            "description": "Distance from the launcher to the target, in metres.",
        },
        "wind": {
            "type": "number", "minimum": -5, "maximum": 5,
            "description": "Horizontal wind in m/s; positive blows toward the target, negative against.",
        },
    },
    "required": ["target_distance", "wind"],
}


class ProjectileTaskError(LazarusError, ValueError):
    """A projectile task outside its schema; the message names the field."""


def landing_distance(angle_deg: float, wind: float, speed: float = 35.0, drag: float = 0.4) -> float:
    """Where a shell launched at `angle_deg` lands (metres from the launcher), under drag and wind."""
    theta = math.radians(angle_deg)
    vx0, vy0 = speed * math.cos(theta), speed * math.sin(theta)
    terminal = GRAVITY / drag
    t = 2 * vy0 / GRAVITY  # drag-free flight time: y(t) <= 0 there, and y is concave, so Newton converges
    for _ in range(50):
        decay = math.exp(-drag * t)
        y = -terminal * t + (vy0 + terminal) * (1 - decay) / drag
        dy = -terminal + (vy0 + terminal) * decay
        step = y / dy
        t -= step
        if abs(step) < 1e-10:
            break
    return wind * t + (vx0 - wind) * (1 - math.exp(-drag * t)) / drag


def launch_angle_for(
    target_distance: float, wind: float, speed: float = 35.0, drag: float = 0.4, min_angle: float = 5.0,
    max_angle: float = 85.0,
) -> float | None:
    """The low launch angle (degrees) that lands exactly at `target_distance`, or None if out of range.

    The range rises with the angle up to the farthest-reaching one and falls after it; the low branch is
    found by bisection below the farthest angle (located on a 0.25-degree grid, then refined by bisection
    on the slope). This is the ground truth the delegation demo checks answers against, not the expert.
    """
    grid = np.arange(min_angle, max_angle + 1e-9, 0.25)
    ranges = [landing_distance(a, wind, speed, drag) for a in grid]
    best = int(np.argmax(ranges))
    low, high = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    for _ in range(40):  # the range is concave around its peak: bisect on the sign of its slope
        mid = (low + high) / 2
        if landing_distance(mid + 1e-6, wind, speed, drag) > landing_distance(mid, wind, speed, drag):
            low = mid
        else:
            high = mid
    farthest = (low + high) / 2
    if not ranges[0] <= target_distance <= landing_distance(farthest, wind, speed, drag):
        return None
    low, high = min_angle, farthest
    for _ in range(60):
        mid = (low + high) / 2
        if landing_distance(mid, wind, speed, drag) < target_distance:
            low = mid
        else:
            high = mid
    return (low + high) / 2


class ProjectileEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self, speed: float = 35.0, drag: float = 0.4, max_shots: int = 3, hit_radius: float = 1.0,
        min_angle: float = 5.0, max_angle: float = 85.0,
    ):
        self.speed, self.drag, self.max_shots, self.hit_radius = speed, drag, max_shots, hit_radius
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = spaces.Box(np.float32(min_angle), np.float32(max_angle), (1,), np.float32)
        self.target_distance, self.wind, self.last_miss, self.shots = 30.0, 0.0, 0.0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task = dict(options or {})
        self.target_distance = float(task.pop("target_distance", self.np_random.uniform(20.0, 45.0)))
        self.wind = float(task.pop("wind", self.np_random.uniform(-5.0, 5.0)))
        if task:
            raise ProjectileTaskError(
                f"projectile task: unknown field(s) {sorted(task)}; expected {TASK_SCHEMA['required']}"
            )
        for name, value in (("target_distance", self.target_distance), ("wind", self.wind)):
            bounds = TASK_SCHEMA["properties"][name]
            if not bounds["minimum"] <= value <= bounds["maximum"]:
                raise ProjectileTaskError(
                    f"projectile task: {name}={value} is outside [{bounds['minimum']}, {bounds['maximum']}]"
                )
        self.last_miss, self.shots = 0.0, 0
        return self._observation(), {}

    def step(self, action):
        angle = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], *self._angle_bounds()))
        landing = landing_distance(angle, self.wind, self.speed, self.drag)
        self.last_miss, self.shots = landing - self.target_distance, self.shots + 1
        hit = abs(self.last_miss) <= self.hit_radius
        reward = 1.0 if hit else -min(abs(self.last_miss), TARGET_SCALE) / TARGET_SCALE
        info = {"launch_angle_deg": angle, "landing_distance": landing, "miss": self.last_miss, "hit": hit}
        return self._observation(), reward, hit, (not hit and self.shots >= self.max_shots), info

    def _angle_bounds(self) -> tuple[float, float]:
        return float(self.action_space.low[0]), float(self.action_space.high[0])

    def _observation(self) -> np.ndarray:
        return np.array(
            [self.target_distance / TARGET_SCALE, self.wind / WIND_SCALE, self.last_miss / TARGET_SCALE,
             self.shots / self.max_shots],
            np.float32,
        )
