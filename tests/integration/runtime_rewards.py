"""Reward functions for the runtime's process tests (importable by learner and actor subprocesses)."""


def starts_with_a_digit(prompts, completions, **kwargs):
    """1 when the completion starts with a digit: a random-init model learns it in a few dozen steps."""
    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]
