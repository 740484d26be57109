"""The parameter server as a subprocess of the real CLI: `lazarus ps serve` / `lazarus ps status`."""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import mlx.core as mx
import pytest

from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.client import ParameterClient, ServerUnavailable

LAZARUS = Path(sys.executable).with_name("lazarus")
READY = re.compile(r"lazarus ps: serving .* on (\S+):(\d+) \(version (\d+), (\w+)[;)]")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """~10M parameters (about 40 MB of float32): a snapshot of ten chunks, so a pull can be cut mid-stream."""
    from lazarus.models.tiny import init_model

    return init_model("llama", "small", tmp_path_factory.mktemp("models") / "llama-small", seed=0)


class CliServer:
    """`lazarus ps serve ...` in a subprocess; `port` is parsed from its ready line."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([str(LAZARUS), "ps", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}") from None
        match = READY.search(line)
        assert match, f"unexpected first line {line!r}"
        self.line = line
        self.port, self.version = int(match.group(2)), int(match.group(3))
        self.address = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAZARUS), "ps", *args], capture_output=True, text=True, timeout=60)


def test_served_model_is_pulled_and_reported_by_status(small_model_dir):
    # given `lazarus ps serve` on a model directory
    from mlx.utils import tree_flatten

    from lazarus.models.load import load

    server = CliServer("--model", str(small_model_dir), "--port", "0")
    try:
        # when a client pulls, then it gets exactly the model's weights
        with ParameterClient(server.address, timeout=30) as client:
            snapshot = client.pull_if_newer(-1)
        model, _ = load(small_model_dir)
        expected = dict(tree_flatten(model.parameters()))
        assert snapshot.version == 0 and set(snapshot.weights) == set(expected)
        assert all(mx.array_equal(snapshot.weights[k], v).item() for k, v in expected.items())
        # and `lazarus ps status` reports it
        result = run_cli("status", server.address)
        assert result.returncode == 0, result.stderr
        assert "health: SERVING" in result.stdout and "version: 0" in result.stdout and "mode: sync" in result.stdout
    finally:
        assert server.stop() == 0


def test_killing_the_server_mid_stream_errors_within_the_deadline_and_the_client_reconnects_after_restart(
        small_model_dir, tmp_path):
    # given a server with a state dir that has stepped once (version 1)
    args = ["--model", str(small_model_dir), "--state-dir", str(tmp_path / "state"), "--lr", "0.01"]
    server = CliServer(*args, "--port", "0")
    client = ParameterClient(server.address, timeout=5, retries=3, backoff=0.1, max_backoff=0.5)
    status = client.info()
    grads = {t.name: mx.ones(tuple(t.shape), getattr(mx, t.dtype)) for t in status.tensors if t.trainable}
    assert client.push_gradients(grads, base_version=0, worker_id="w").version == 1
    before = client.pull_if_newer(0)
    # when the server is killed while a pull is streaming
    stream = client.iter_pull(-1, timeout=5)
    header = pb.SnapshotPart.FromString(next(stream)).header
    assert header.num_chunks > 5
    next(stream)
    server.kill()
    # then the stream ends in an error, not a hang
    with pytest.raises(grpc.RpcError) as e:
        for _ in stream:
            pass
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # and a retrying pull gives up within its deadline
    with pytest.raises(ServerUnavailable):
        client.pull_if_newer(-1, timeout=2)
    # when the server restarts on the same port and state dir
    restarted = CliServer(*args, "--port", str(server.port))
    try:
        assert restarted.version == 1
        # then the same client reconnects and pulls the same version-1 weights
        again = client.pull_if_newer(-1)
        assert again.version == 1 and again.sha256 == before.sha256
    finally:
        client.close()
        restarted.stop()


def test_serve_refuses_a_public_address_without_a_token_in_one_line(micro_model_dir):
    result = run_cli("serve", "--model", str(micro_model_dir), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: refusing to bind 0.0.0.0 without an auth token: pass --token-file (and preferably "
        "--tls-cert/--tls-key), or bind 127.0.0.1"]


def test_status_with_the_token_file_succeeds_and_without_it_fails_in_one_line(micro_model_dir, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = CliServer("--model", str(micro_model_dir), "--port", "0", "--token-file", str(token))
    try:
        denied = run_cli("status", server.address)
        assert denied.returncode == 2 and "Traceback" not in denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1 and "UNAUTHENTICATED" in denied.stderr
        allowed = run_cli("status", server.address, "--token-file", str(token))
        assert allowed.returncode == 0 and "version: 0" in allowed.stdout
    finally:
        server.stop()


def test_status_of_an_address_nobody_serves_fails_in_one_line():
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("status", f"127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in result.stderr


def test_a_second_serve_on_a_taken_port_fails_in_one_line_and_the_first_keeps_its_clients(micro_model_dir):
    # given one `lazarus ps serve` on some port
    first = CliServer("--model", str(micro_model_dir), "--port", "0")
    try:
        # when a second one is started on the same port
        result = run_cli("serve", "--model", str(micro_model_dir), "--port", str(first.port))
        # then it exits 2 with one line naming the address and the cause
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"127.0.0.1:{first.port}" in lines[0] and "address already in use" in lines[0]
        # and the first still serves
        with ParameterClient(first.address, timeout=10) as client:
            assert client.info().version == 0
    finally:
        first.stop()


def test_served_model_goes_to_remote_clients_through_the_transfer_port_it_prints(small_model_dir):
    # given a free port, and `lazarus ps serve --transfer-port` on it
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    server = CliServer("--model", str(small_model_dir), "--port", "0", "--transfer-port", str(port))
    try:
        # then the ready line names it
        assert f"weight transfers on port {port}" in server.line
        # and a client pulling as from another host gets the weights through it, not the gRPC stream
        with ParameterClient(server.address, timeout=30, shared_memory=False) as far, \
                ParameterClient(server.address, timeout=30, shared_memory=False, transfer_socket=False) as streaming:
            moved, streamed = far.pull_if_newer(-1), streaming.pull_if_newer(-1)
            assert far.transfer_socket and moved.sha256 == streamed.sha256
    finally:
        server.kill()
    # and `--transfer-port -1` serves without one
    server = CliServer("--model", str(small_model_dir), "--port", "0", "--transfer-port", "-1")
    try:
        assert "weight transfers" not in server.line
        with ParameterClient(server.address, timeout=30, shared_memory=False) as far:
            assert far.pull_if_newer(-1).version == 0 and not far.transfer_socket
    finally:
        server.kill()
