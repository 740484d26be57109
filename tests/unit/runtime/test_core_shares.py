"""The process launcher shares one host's cores between the learner and its actor processes."""

import pytest

from lazarus.config import load_config
from lazarus.runtime.process import ACTOR_NICENESS_ASYNC, share_cores


def make_config(*overrides):
    return load_config(None, ["algorithm=grpo", *overrides])


@pytest.mark.parametrize("cores,actors,actor_threads", [(2, 1, 2), (8, 2, 4), (8, 3, 2), (2, 4, 1)])
def test_in_sync_mode_actors_split_the_cores_and_the_learner_keeps_them_all(cores, actors, actor_threads):
    # given a sync run: actors generate together, then the learner updates alone
    cfg = make_config(f"runtime.actors={actors}")
    shares = share_cores(cfg, cores)
    assert (shares.learner_threads, shares.actor_threads, shares.actor_niceness) == (cores, actor_threads, 0)
    assert not shares.overlap  # the processes take turns: idle BLAS threads may spin


@pytest.mark.parametrize("cores,actors,learner_threads,actor_threads",
                         [(2, 1, 1, 1), (8, 1, 4, 4), (8, 3, 2, 2), (2, 2, 1, 1), (7, 2, 3, 2)])
def test_in_async_mode_the_learner_and_actors_split_the_cores_and_actors_yield_to_it(cores, actors, learner_threads,
                                                                                       actor_threads):
    # given an async run: the learner's update (the bottleneck) runs while the actors generate
    cfg = make_config(f"runtime.actors={actors}", "runtime.mode=async", "runtime.max_staleness=1")
    shares = share_cores(cfg, cores)
    # then the learner counts as one more actor (and keeps any remainder)
    assert (shares.learner_threads, shares.actor_threads) == (learner_threads, actor_threads)
    assert shares.actor_niceness == ACTOR_NICENESS_ASYNC > 0
    assert shares.overlap  # so idle BLAS threads sleep and leave their cycles to the actors


def test_threads_the_user_set_are_kept_for_every_process():
    cfg = make_config("runtime.actors=2", "runtime.mode=async", "runtime.max_staleness=1")
    shares = share_cores(cfg, 16, explicit_threads="3")
    assert (shares.learner_threads, shares.actor_threads) == (3, 3)


def test_runtime_actor_niceness_overrides_the_default_in_either_mode():
    assert share_cores(make_config("runtime.mode=async", "runtime.actor_niceness=0"), 2).actor_niceness == 0
    assert share_cores(make_config("runtime.actor_niceness=5"), 2).actor_niceness == 5
