"""Weight broadcast benchmark: how fast a new version reaches the actors, measured in one run.

1. A remote client's pull against raw TCP `sendall` on loopback: for a 100 MB float32 snapshot, 1, 2 and 4
   client processes pull at once, without shared memory (as from another host): through the server's
   transfer socket (the client's default), then over the gRPC stream alone. Each client decodes and
   verifies the snapshot into MLX arrays (sha256 per chunk and per snapshot); each raw TCP client only
   `recv_into`s a buffer. Prints MB/s for the three and the ratios to raw TCP (target: the client's pull
   >= 0.5x raw TCP for one client, steady). The same for 1 GB and one client last.
2. Broadcast: the learner publishes a new version and 1, 2, 4 or 8 actor processes on this host pull it;
   the time is from `publish` until the last actor holds the whole version in MLX arrays, so it includes
   the server serializing the version once. Actors use the client's default (the server's sealed
   shared memory, since they are on its host), then, for comparison, the gRPC stream alone. Prints
   `broadcast 8 clients vs 1: time ratio R` (target: <= 1.5).
3. The bytes a LoRA-only sync moves against a full sync of the same model.

Every figure is a ratio against a baseline measured in the same run; on a machine shared with other
work the absolute numbers move, the ratios less so.

    .venv/bin/python bench/weights.py            # full run (~3 GB of RAM)
    .venv/bin/python bench/weights.py --quick    # small sizes, seconds (CI)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import tempfile
import threading
import time

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx

MB = 1024 * 1024
#: Each client transfers the snapshot `PULLS` times on one connection, dropping each before the next as
#: a rollout actor drops the version it replaces. A process's first pull also pays for mapping fresh
#: memory (its receive buffers and destination arrays, and under a VM the host backing them); the
#: median of the later pulls is its steady state, reported as "steady" for both transports.
PULLS = 6  # the median of 5 steady rounds: on a 2-core host one slow round in 3 moved the median by 20-40%


def snapshot_weights(total_bytes: int, tensor_bytes: int = 32 * MB) -> dict[str, mx.array]:
    """float32 tensors adding up to `total_bytes`, shaped like a model's layers."""
    weights, left, i = {}, total_bytes, 0
    while left > 0:
        n = min(tensor_bytes, left) // 4
        weights[f"model.layers.{i}.weight"] = mx.random.normal((n // 1024, 1024)) if n >= 1024 else mx.zeros((n,))
        left -= n * 4
        i += 1
    mx.eval(list(weights.values()))
    return weights


# -- clients (each in its own process) ------------------------------------------------------------------


def grpc_client(address: str, transfer_socket: bool, ready, go, results) -> None:
    from lazarus.distributed.client import ParameterClient

    with ParameterClient(address, timeout=600, shared_memory=False, transfer_socket=transfer_socket) as client:
        client.info()  # connect before the clock starts
        for pull in range(PULLS):
            ready.put(pull)
            go[pull].wait()
            start = time.time()
            snapshot = client.pull_if_newer(-1)
            end = time.time()
            results.put((pull, start, end, sum(v.nbytes for v in snapshot.weights.values())))
            del snapshot


def tcp_client(address: tuple[str, int], size: int, ready, go, results) -> None:
    buffer = bytearray(size)  # zero-filled, so its pages are mapped before the clock starts
    view = memoryview(buffer)
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        for pull in range(PULLS):
            ready.put(pull)
            go[pull].wait()
            start = time.time()
            sock.sendall(b"g")
            got = 0
            while got < size:
                n = sock.recv_into(view[got:], size - got)
                if n == 0:
                    raise ConnectionError(f"raw TCP sender closed after {got} of {size} bytes")
                got += n
            end = time.time()
            results.put((pull, start, end, got))


def run_clients(target, args, n: int) -> list[tuple[float, float]]:
    """Start `n` client processes and release them together for each pull.

    Returns (aggregate MB/s, mean per-client MB/s) for each of the `PULLS` pulls.
    """
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), [ctx.Event() for _ in range(PULLS)], ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, ready, go, results)) for _ in range(n)]
    [p.start() for p in procs]
    rates = []
    for pull in range(PULLS):
        [ready.get(timeout=900) for _ in range(n)]  # every client connected and done with the last pull
        go[pull].set()
        timings = [results.get(timeout=900) for _ in range(n)]
        start, end = min(t[1] for t in timings), max(t[2] for t in timings)
        total = sum(t[3] for t in timings)
        per_client = sum(t[3] / (t[2] - t[1]) for t in timings) / n
        rates.append((total / MB / (end - start), per_client / MB))
    [p.join() for p in procs]
    return rates


# -- servers ----------------------------------------------------------------------------------------------


def raw_tcp_server(payload: bytes, n: int) -> tuple[tuple[str, int], threading.Thread]:
    """Send `payload` with one `sendall` to each of `n` connections each time it asks."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_all():
        with listener:
            conns = [listener.accept()[0] for _ in range(n)]
            threads = [threading.Thread(target=send, args=(c,)) for c in conns]
            [t.start() for t in threads]
            [t.join() for t in threads]

    def send(conn):
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MB)
            while conn.recv(1):  # one whole payload per request, until the client hangs up
                conn.sendall(payload)

    thread = threading.Thread(target=serve_all, daemon=True)
    thread.start()
    return listener.getsockname(), thread


def bench_stream_vs_tcp(size: int, client_counts: list[int]) -> None:
    from lazarus.distributed.server import ParameterStore, serve

    weights = snapshot_weights(size)
    store = ParameterStore(weights)
    t0 = time.perf_counter()
    encoded = store.snapshot()
    encode_s = time.perf_counter() - t0
    print(f"\n{size / MB:.0f} MB float32 snapshot: {len(encoded.parts) - 1} chunks, "
          f"serialized once in {encode_s:.2f} s ({size / MB / encode_s:.0f} MB/s)")
    print(f"{'clients':>7}  {'pull':>6}  {'transfer MB/s':>13}  {'per client':>10}  {'gRPC MB/s':>9}  "
          f"{'raw TCP MB/s':>12}  {'per client':>10}  {'transfer/raw':>12}  {'gRPC/raw':>8}")
    payload = b"".join(encoded.parts)  # same byte count as the gRPC stream carries
    with serve(store) as server:
        for n in client_counts:
            transfer_rates = run_clients(grpc_client, (server.address, True), n)
            grpc_rates = run_clients(grpc_client, (server.address, False), n)
            address, sender = raw_tcp_server(payload, n)
            tcp_rates = run_clients(tcp_client, (address, len(payload)), n)
            sender.join()
            rows = {"first": (transfer_rates[0], grpc_rates[0], tcp_rates[0]),
                    "steady": (_median(transfer_rates[1:]), _median(grpc_rates[1:]), _median(tcp_rates[1:]))}
            for name, ((moved, moved_each), (grpc_total, _), (tcp_total, tcp_each)) in rows.items():
                print(f"{n:>7}  {name:>6}  {moved:>13.0f}  {moved_each:>10.0f}  {grpc_total:>9.0f}  "
                      f"{tcp_total:>12.0f}  {tcp_each:>10.0f}  {moved / tcp_total:>12.2f}  "
                      f"{grpc_total / tcp_total:>8.2f}", flush=True)
    del payload, encoded


# -- broadcast: publish -> every actor on this host holds the new version --------------------------------


def actor(address: str, shared_memory: bool, ready, go, results) -> None:
    """An actor process: pull each new version when told one was published; report when it holds it."""
    from lazarus.distributed.client import ParameterClient

    with ParameterClient(address, timeout=600, shared_memory=shared_memory) as client:
        have = client.pull_if_newer(-1).version  # connected, buffers warm, holding the current version
        for round_ in range(PULLS):
            ready.put(round_)
            go[round_].wait()
            snapshot = client.pull_if_newer(have)
            results.put((round_, time.time(), sum(v.nbytes for v in snapshot.weights.values())))
            have = snapshot.version
            del snapshot


def broadcast_seconds(store, address: str, shared_memory: bool, n: int) -> list[float]:
    """For each of `PULLS` rounds: seconds from publishing a new version until the last of `n` actors holds it."""
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), [ctx.Event() for _ in range(PULLS)], ctx.Queue()
    procs = [ctx.Process(target=actor, args=(address, shared_memory, ready, go, results)) for _ in range(n)]
    [p.start() for p in procs]
    seconds = []
    for round_ in range(PULLS):
        [ready.get(timeout=900) for _ in range(n)]
        published = time.time()
        store.publish(store.weights)  # version + 1 (same values: the cost of a version does not depend on them)
        go[round_].set()  # as WatchVersions would tell them
        done = [results.get(timeout=900) for _ in range(n)]
        assert all(d[2] == store.snapshot().header.total_bytes for d in done)
        seconds.append(max(d[1] for d in done) - published)
    [p.join() for p in procs]
    return seconds


def bench_broadcast(size: int, client_counts: list[int]) -> None:
    from lazarus.distributed.server import ParameterStore, serve

    store = ParameterStore(snapshot_weights(size))
    print(f"\nbroadcast of a new {size / MB:.0f} MB version to actors on this host: seconds from publish until the "
          f"last actor holds it (median of rounds 2-{PULLS}; round 1 maps fresh memory)")
    print(f"{'clients':>7}  {'shared memory s':>15}  {'vs 1':>5}  {'gRPC stream s':>13}  {'vs 1':>5}  "
          f"{'stream / shared':>15}")
    times: dict[bool, dict[int, float]] = {True: {}, False: {}}
    with serve(store) as server:
        for n in client_counts:
            for shared_memory in (True, False):
                rounds = broadcast_seconds(store, server.address, shared_memory, n)
                times[shared_memory][n] = statistics.median(rounds[1:])
            shm, stream = times[True][n], times[False][n]
            print(f"{n:>7}  {shm:>15.3f}  {shm / times[True][1]:>5.2f}  {stream:>13.3f}  "
                  f"{stream / times[False][1]:>5.2f}  {stream / shm:>15.2f}", flush=True)
    most = client_counts[-1]
    print(f"gRPC stream only: {most} clients vs 1: time ratio {times[False][most] / times[False][1]:.2f}")
    print(f"broadcast {most} clients vs 1: time ratio {times[True][most] / times[True][1]:.2f} (target <= 1.5)")


def _median(rates: list[tuple[float, float]]) -> tuple[float, float]:
    """The pull with the median aggregate rate, as (aggregate MB/s, per-client MB/s)."""
    return sorted(rates)[len(rates) // 2]


def bench_lora_bytes(size: str) -> None:
    from lazarus.distributed import parameter_server_pb2 as pb
    from lazarus.distributed.server import ParameterStore
    from lazarus.models.load import load, num_parameters
    from lazarus.models.lora import apply_lora
    from lazarus.models.tiny import init_model

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load(init_model("llama", size, f"{tmp}/model", seed=0))
    apply_lora(model, rank=8)
    store = ParameterStore.from_model(model)
    full, lora = store.snapshot(pb.SCOPE_FULL).nbytes, store.snapshot(pb.SCOPE_TRAINABLE).nbytes
    print(f"\nLoRA-only vs full sync, llama {size} ({num_parameters(model) / 1e6:.1f}M parameters, rank 8, "
          f"all linear layers): full {full / MB:.2f} MB, LoRA {lora / MB:.3f} MB on the wire "
          f"({full / lora:.0f}x fewer bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MB snapshots, 1 and 2 clients, no 1 GB row")
    args = parser.parse_args()
    size = 8 * MB if args.quick else 100 * MB
    print("weight broadcast on loopback; targets: a remote client's pull >= 0.5x raw TCP for one client, a new "
          "version reaching 8 actors in <= 1.5x the time it reaches 1")
    bench_stream_vs_tcp(size, [1, 2] if args.quick else [1, 2, 4])
    bench_broadcast(size, [1, 2] if args.quick else [1, 2, 4, 8])
    if not args.quick:
        bench_stream_vs_tcp(1024 * MB, [1])
    bench_lora_bytes("tiny" if args.quick else "small")


if __name__ == "__main__":
    main()
