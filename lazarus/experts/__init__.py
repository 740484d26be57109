"""Small recurrent control experts (GRU, LSTM, or an MLP baseline) trained with PPO on Gymnasium envs.

    config   PolicySpec (a saved expert's network) and PPOConfig (training), per-env presets
    policy   ExpertPolicy (mlx.nn) and RolloutPolicy, its numpy twin for stepping envs
    ppo      recurrent PPO with GAE: rollout, chunks replayed from stored states, the update, train()
    envs     CartPole-v1, Pendulum-v1, CartPoleNoVel-v1, Projectile-v0; EnvBatch
    registry save/load, NAME@vN versions, list
    episodes evaluate(), run_episode(), and run_expert(name_or_dir, task) -> dict, the call a tool makes

`run_expert` is importable from here without loading the trainer.
"""

from lazarus.experts.episodes import run_expert

__all__ = ["run_expert"]
