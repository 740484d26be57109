"""Data-parallel learner steppers over a real parameter server on loopback (owner-stepped sync mode).

The leader's sync here is the store itself in this process (what `runtime.replicas.ReplicaGroup.gather` does
without its membership checks); the follower's is `RemoteSync` over real gRPC.
"""

from __future__ import annotations

import threading

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lazarus.distributed.client import ParameterClient
from lazarus.distributed.server import ParameterStore, StaleGradient, serve
from lazarus.runtime.replicas import RemoteSync, check_data_parallel
from lazarus.training.data_parallel import FollowerStepper, LeaderStepper, shard_rows
from lazarus.training.step import Stepper

LR = 0.5
TOLERANCE = 2e-5  # float32: the sum of two half-batch gradients vs the whole batch's, through clipping and SGD


def next_token_loss(model, inputs, targets):
    logits = model(inputs)
    return nn.losses.cross_entropy(logits, targets, reduction="mean"), {}


def load_model(path):
    from lazarus.models.load import load

    model, _ = load(path)
    return model


def batch(seed: int, rows: int = 4, length: int = 8):
    tokens = mx.random.randint(0, 200, (rows, length + 1), key=mx.random.key(seed))
    return tokens[:, :-1], tokens[:, 1:]


def trainable(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


class StoreSync:
    """The leader's sync on an owner-stepped store in this process: wait for `replicas` pushes, average."""

    def __init__(self, store: ParameterStore, replicas: int):
        self.store, self.replicas = store, replicas

    def gather(self, partial, version):
        self.store.push(version, partial, worker_id="learner-0")
        assert len(self.store.wait_for_push(self.replicas, 60.0)) == self.replicas
        mean, _ = self.store.take_mean(version)
        return mean, self.replicas

    def publish(self, weights):
        return self.store.publish(weights)


def test_an_owner_stepped_store_averages_the_pushes_and_moves_only_when_its_owner_publishes(micro_model_dir):
    # given an owner-stepped sync store and two pushes for version 0
    model = load_model(micro_model_dir)
    weights = dict(tree_flatten(model.trainable_parameters()))
    store = ParameterStore(weights, mode="sync", optimizer=None)
    name = next(iter(weights))
    ones = {n: mx.ones_like(w) for n, w in weights.items()}
    threes = {n: 3 * mx.ones_like(w) for n, w in weights.items()}
    # when both arrive
    first, second = store.push(0, ones, worker_id="a"), store.push(0, threes, worker_id="b")
    # then nothing is applied and the version stays until the owner takes the mean and publishes
    assert not first.applied and not second.applied and store.version == 0
    assert sorted(store.pushed()) == ["a", "b"]
    mean, count = store.take_mean(0)
    assert count == 2 and float(mean[name].max()) == float(mean[name].min()) == 2.0
    assert store.pushed() == [] and store.version == 0
    assert store.publish(weights) == 1
    # and a mean for a version nobody pushed to is refused
    with pytest.raises(StaleGradient):
        store.take_mean(1)


def test_two_replicas_on_halves_make_the_same_update_as_one_learner_on_the_whole_batch(micro_model_dir):
    # given one learner stepping SGD with clipping locally, and a leader (same optimizer) + follower pair
    single = load_model(micro_model_dir)
    local = Stepper(single, optim.SGD(learning_rate=LR), next_token_loss, max_grad_norm=0.5, compile=False)
    leader_model, follower_model = load_model(micro_model_dir), load_model(micro_model_dir)
    store = ParameterStore(dict(tree_flatten(leader_model.trainable_parameters())), mode="sync", optimizer=None)
    server = serve(store, host="127.0.0.1", port=0)
    try:
        leader = LeaderStepper(leader_model, optim.SGD(learning_rate=LR), next_token_loss, StoreSync(store, 2),
                               version=0, max_grad_norm=0.5, compile=False)
        follower = FollowerStepper(follower_model, next_token_loss,
                                   RemoteSync(ParameterClient(server.address), "learner-1", step_timeout=60),
                                   version=0, compile=False)
        errors: list[BaseException] = []

        def replica(stepper, shard: int, inputs, targets) -> None:
            try:
                rows = mx.array(shard_rows(np.arange(4), shard, 2))
                stepper.accumulate(inputs[rows], targets[rows], weight=0.5)  # its share of the step
                stepper.apply()
            except BaseException as e:  # surfaced in the main thread below
                errors.append(e)

        # when both take three steps, the single learner on whole batches, each replica on its half
        for step in range(3):
            inputs, targets = batch(step)
            local.accumulate(inputs, targets)
            local.apply()
            threads = [threading.Thread(target=replica, args=(s, i, inputs, targets))
                       for i, s in enumerate((leader, follower))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert not errors, errors
    finally:
        server.stop(grace=0.5)
    # then both replicas hold the same weights at the same version, equal to the single learner's (tolerance)
    expected, a, b = trainable(single), trainable(leader_model), trainable(follower_model)
    assert leader.version == follower.version == 3
    for name in expected:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_allclose(a[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=name)
    # and the weights did move (the comparison above is not between two untouched copies)
    initial = trainable(load_model(micro_model_dir))
    assert max(float(np.abs(expected[n] - initial[n]).max()) for n in expected) > 100 * TOLERANCE


def test_shards_cover_every_row_of_a_step_once_in_order():
    rows = np.arange(10, 17)
    parts = [shard_rows(rows, i, 3) for i in range(3)]
    assert np.concatenate(parts).tolist() == rows.tolist()
    assert [len(p) for p in parts] == [3, 2, 2]


def test_data_parallel_learners_for_ppo_are_refused_naming_the_field():
    from lazarus.config import ConfigError, load_config

    cfg = load_config(None, ["algorithm=ppo", "training.learners=2"])
    with pytest.raises(ConfigError, match="training.learners: 2 data-parallel learners are implemented for "
                                          "algorithm grpo, not ppo"):
        check_data_parallel(cfg)


def test_data_parallel_learners_for_sft_are_refused_before_anything_is_written(tmp_path):
    from lazarus.config import ConfigError, load_config
    from lazarus.runtime.local import run_training

    cfg = load_config(None, ["algorithm=sft", "training.learners=3", f"training.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="training.learners: 3 data-parallel learners are implemented for "
                                          "algorithm grpo, not sft"):
        run_training(cfg)
    assert not (tmp_path / "run").exists()
