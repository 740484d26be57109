"""Projectile-v0's physics: the closed-form flight with linear drag against a fine numerical integration."""

import numpy as np
import pytest

from lazarus.experts.projectile import GRAVITY, ProjectileEnv, landing_distance, launch_angle_for


def integrated_landing(angle_deg, wind, speed=35.0, drag=0.4, dt=1e-5):
    """Semi-implicit Euler on dv/dt = -g e_y - k (v - w e_x), until the shell comes back to y = 0."""
    theta = np.radians(angle_deg)
    x, y, vx, vy = 0.0, 0.0, speed * np.cos(theta), speed * np.sin(theta)
    while True:
        vx += -drag * (vx - wind) * dt
        vy += (-GRAVITY - drag * vy) * dt
        nx, ny = x + vx * dt, y + vy * dt
        if ny < 0:
            return x + (nx - x) * y / (y - ny)
        x, y = nx, ny


@pytest.mark.parametrize("angle, wind", [(10.0, 0.0), (25.0, -5.0), (40.0, 3.0), (70.0, -2.0)])
def test_landing_distance_matches_a_fine_numerical_integration(angle, wind):
    assert landing_distance(angle, wind) == pytest.approx(integrated_landing(angle, wind), abs=0.01)


def test_a_headwind_shortens_and_a_tailwind_lengthens_the_shot():
    assert landing_distance(30.0, -5.0) < landing_distance(30.0, 0.0) < landing_distance(30.0, 5.0)


def test_an_episode_ends_on_a_hit_and_reports_the_shot():
    # given: a task and the angle that hits it (found by bisection on the rising side of the range curve)
    env = ProjectileEnv()
    env.reset(seed=0, options={"target_distance": 37.0, "wind": -2.0})
    low, high = 5.0, 25.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if landing_distance(mid, -2.0) < 37.0 else (low, mid)
    # when: the env is stepped with that angle
    obs, reward, terminated, truncated, info = env.step(np.array([low], np.float32))
    # then: a hit, the episode is over, and the info names the shot
    assert info["hit"] and terminated and not truncated and reward == 1.0
    assert info["launch_angle_deg"] == pytest.approx(low, abs=1e-4)
    assert abs(info["miss"]) <= 1.0


def test_misses_are_observed_and_the_episode_is_truncated_after_the_last_shot():
    env = ProjectileEnv(max_shots=2)
    env.reset(seed=0, options={"target_distance": 40.0, "wind": 0.0})
    obs, reward, terminated, truncated, info = env.step(np.array([5.0], np.float32))
    assert not info["hit"] and not (terminated or truncated)
    assert obs[2] == pytest.approx(info["miss"] / 50.0) and reward == pytest.approx(-abs(info["miss"]) / 50.0)
    *_, terminated, truncated, _ = env.step(np.array([5.0], np.float32))
    assert truncated and not terminated


@pytest.mark.parametrize("distance, wind", [(20.0, 5.0), (31.7, -2.4), (45.0, -5.0), (44.9, 4.9)])
def test_launch_angle_for_finds_the_low_angle_that_lands_on_the_target(distance, wind):
    angle = launch_angle_for(distance, wind)
    assert landing_distance(angle, wind) == pytest.approx(distance, abs=1e-6)
    # the low branch: a slightly higher angle still flies farther
    assert landing_distance(angle + 0.5, wind) > distance


def test_launch_angle_for_a_target_out_of_range_is_none():
    assert launch_angle_for(200.0, 0.0) is None and launch_angle_for(1.0, 0.0) is None
