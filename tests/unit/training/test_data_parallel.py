"""Data-parallel learner replicas over a real parameter server on loopback (sync mode, N-way average)."""

from __future__ import annotations

import threading

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lazarus.distributed.client import ParameterClient
from lazarus.distributed.server import ParameterStore, serve
from lazarus.training.data_parallel import DataParallelConfigError, DataParallelStepper, ReplicaTimeout
from lazarus.training.step import Stepper

LR = 0.5
TOLERANCE = 2e-5  # float32: the mean of two half-batch gradients vs the whole-batch gradient


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


@pytest.fixture
def server(micro_model_dir):
    servers = []

    def start(workers: int):
        model = load_model(micro_model_dir)
        store = ParameterStore.from_model(model, mode="sync", workers=workers, optimizer="sgd", learning_rate=LR)
        running = serve(store, host="127.0.0.1", port=0)
        servers.append(running)
        return running.address

    yield start
    for s in servers:
        s.stop(grace=0.5)


def test_two_replicas_on_halves_make_the_same_update_as_one_learner_on_the_whole_batch(micro_model_dir, server):
    # given one learner stepping SGD locally, and two replicas sharing a sync parameter server with SGD
    single = load_model(micro_model_dir)
    local = Stepper(single, optim.SGD(learning_rate=LR), next_token_loss, max_grad_norm=None, compile=False)
    address = server(workers=2)
    replicas = [load_model(micro_model_dir) for _ in range(2)]
    steppers = [DataParallelStepper(m, next_token_loss, ParameterClient(address), f"r{i}", replicas=2,
                                    compile=False, step_timeout=60) for i, m in enumerate(replicas)]
    errors: list[BaseException] = []

    def replica(i: int, inputs, targets) -> None:
        try:
            half = slice(2 * i, 2 * i + 2)
            steppers[i].accumulate(inputs[half], targets[half])
            steppers[i].apply()
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    # when both take two steps, the single learner on whole batches, each replica on its half
    for step in range(2):
        inputs, targets = batch(step)
        local.accumulate(inputs, targets)
        local.apply()
        threads = [threading.Thread(target=replica, args=(i, inputs, targets)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
    # then both replicas hold the same weights at the same version, equal to the single learner's (tolerance)
    expected, a, b = trainable(single), trainable(replicas[0]), trainable(replicas[1])
    assert steppers[0].version == steppers[1].version == 2
    for name in expected:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_allclose(a[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=name)
    # and the weights did move (the comparison above is not between two untouched copies)
    initial = trainable(load_model(micro_model_dir))
    assert max(float(np.abs(expected[n] - initial[n]).max()) for n in expected) > 100 * TOLERANCE


def test_unequal_shards_are_weighted_by_their_share_of_the_batch(micro_model_dir, server):
    # given a single learner and two replicas taking 3 and 1 rows of a 4-row batch
    single = load_model(micro_model_dir)
    local = Stepper(single, optim.SGD(learning_rate=LR), next_token_loss, max_grad_norm=None, compile=False)
    address = server(workers=2)
    replicas = [load_model(micro_model_dir) for _ in range(2)]
    shares, cuts = (0.75, 0.25), (slice(0, 3), slice(3, 4))
    steppers = [DataParallelStepper(m, next_token_loss, ParameterClient(address), f"r{i}", replicas=2,
                                    share=shares[i], compile=False, step_timeout=60) for i, m in enumerate(replicas)]
    inputs, targets = batch(7)
    # when each steps on its shard and the single learner on the whole batch
    local.accumulate(inputs, targets)
    local.apply()
    threads = [threading.Thread(target=lambda i=i: (steppers[i].accumulate(inputs[cuts[i]], targets[cuts[i]]),
                                                    steppers[i].apply())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # then the update is the whole batch's
    expected, got = trainable(single), trainable(replicas[1])
    assert steppers[1].version == 1
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=name)


def test_a_replica_that_never_pushes_makes_the_step_time_out_with_a_clear_error(micro_model_dir, server):
    # given a sync server expecting two replicas, and only one alive
    address = server(workers=2)
    alive = DataParallelStepper(load_model(micro_model_dir), next_token_loss, ParameterClient(address), "r0",
                                replicas=2, compile=False, step_timeout=1.5)
    inputs, targets = batch(0)
    alive.accumulate(inputs[:2], targets[:2])
    # when it applies its step, then it times out naming the step and how many replicas pushed
    with pytest.raises(ReplicaTimeout, match=r"training.learners: step 1 did not complete within 1.5 s: 1 of 2 "
                                             r"replicas pushed"):
        alive.apply()


def test_per_replica_clipping_is_refused_in_one_line(micro_model_dir, server):
    address = server(workers=2)
    with pytest.raises(DataParallelConfigError, match="optim.max_grad_norm"):
        DataParallelStepper(load_model(micro_model_dir), next_token_loss, ParameterClient(address), "r0",
                            replicas=2, max_grad_norm=1.0)
