"""Reward functions for the runtime's process tests (importable by learner and actor subprocesses)."""


def starts_with_a_digit(prompts, completions, **kwargs):
    """1 when the completion starts with a digit: a random-init model learns it in a few dozen steps."""
    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]


def digit_in_worker_process(prompts, completions, **kwargs):
    """`starts_with_a_digit`, recording the pid that scored it (so a test can see scoring left the actor)."""
    import os
    from pathlib import Path

    log = os.environ.get("LAZARUS_TEST_SCORER_PIDS")
    if log:
        with Path(log).open("a") as f:
            f.write(f"{os.getpid()}\n")
    return starts_with_a_digit(prompts, completions)


def slow_starts_with_a_digit(prompts, completions, **kwargs):
    """`starts_with_a_digit` after a second of work (or $LAZARUS_TEST_REWARD_SLEEP seconds): a task stays in
    flight long enough to be killed in."""
    import os
    import time

    time.sleep(float(os.environ.get("LAZARUS_TEST_REWARD_SLEEP", "1.0")))
    return starts_with_a_digit(prompts, completions)


def five_second_starts_with_a_digit(prompts, completions, **kwargs):
    """`starts_with_a_digit` after five seconds of work: a task is surely still in flight when a test that saw
    it leased kills its actor, however slow the status call was."""
    import time

    time.sleep(5.0)
    return starts_with_a_digit(prompts, completions)
