"""Lazarus: RL post-training (SFT, DPO, GRPO, PPO) for language models on MLX."""

from lazarus import platform as _platform  # noqa: F401  (must run before mlx.core is imported)

__version__ = "0.1.0"
