"""Reward functions the training tests name in configs (`scripted_rewards:NAME`): known, simple rewards."""


def always_right(prompts, completions, **columns) -> list[float]:
    """1 for every completion: a level is mastered as soon as its window fills."""
    return [1.0] * len(completions)


def even_length(prompts, completions, **columns) -> list[float]:
    """1 when the completion has an even number of characters: a reward that varies from group to group."""
    return [float(len(c) % 2 == 0) for c in completions]

