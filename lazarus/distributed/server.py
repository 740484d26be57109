"""The parameter server: versioned weight snapshots, gradient sync, and the Experience service skeleton.

`ParameterStore` is the state that lives: the weights, their `version`, the optimizer, the gradients
waiting for a synchronous step, and the serialized snapshot of the current version (built once, on
first pull, then served to every puller). Two gradient modes:

- sync: a step waits for `workers` gradients computed on the current version, averages them, applies
  the optimizer and publishes version + 1. A gradient for an older version is refused.
- async: every gradient is applied as it arrives; one whose base version is more than `max_staleness`
  versions behind is refused with FAILED_PRECONDITION.
- sync with `optimizer=None` (data-parallel learners, runtime/replicas.py): the store only sums the
  gradients pushed for the current version; its owner takes their mean (`take_mean`) once every replica it
  expects has pushed, steps its own optimizer and publishes the result as version + 1.

Non-finite numbers never get in: a gradient or published tensor holding NaN/Inf is refused
(INVALID_ARGUMENT, naming the tensor) before it touches anything, and a step whose result would be
non-finite is rolled back, so no such version is ever served or written to the state directory.

With a `state_dir`, the store checkpoints weights, optimizer state and version after every new version
(atomically), and a store started on the same directory continues from that version. Gradients
waiting for a sync step are not checkpointed: after a restart, workers push them again.

`serve()` puts the store (and an `ExperienceHub`, see experience.py) behind a gRPC server with the health
service, the token interceptor and the size limits of `auth`, every call under the limits of `guard`;
clients on the same host get each version through sealed shared memory (`shared`), clients on other
hosts through the transfer socket beside it (`transfer`), and either falls back to the gRPC stream.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import collections
import errno
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from mlx.utils import tree_flatten, tree_map

from lazarus.distributed import auth, codec, experience_pb2_grpc
from lazarus.distributed.experience import ExperienceService, RunSpec
from lazarus.distributed.hub import ExperienceHub
from lazarus.distributed.guard import CallGuard, MethodLimit
from lazarus.distributed.shared import SharedSnapshots
from lazarus.distributed.transfer import TransferListener
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.models.io import atomic_dir, read_json, save_safetensors, write_json

MODES = ("sync", "async")
OPTIMIZERS: dict[str, Callable[[float], optim.Optimizer]] = {
    "sgd": lambda lr: optim.SGD(learning_rate=lr),
    "adam": lambda lr: optim.Adam(learning_rate=lr),
    "adamw": lambda lr: optim.AdamW(learning_rate=lr),
}
STATE_SUBDIR = "ps-state"
STATE_FORMAT = 1
SERVICE = "lazarus.v1.ParameterServer"
RECENT_PUSHES = 1024
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class GradientRejected(LazarusError, ValueError):
    """A gradient push that does not fit the trainable parameters; names the tensor and the worker."""


class StaleGradient(Exception):
    """A gradient computed on a version the server no longer accepts."""


class DuplicateGradient(Exception):
    """A second gradient from the same worker for the same synchronous step."""


class ServerStateError(LazarusError, ValueError):
    """A state checkpoint that does not fit the served model; names the file and tensor."""


@dataclass
class PushOutcome:
    accepted: bool
    applied: bool
    version: int
    pending: int
    detail: str = ""

    def to_proto(self) -> pb.PushResult:
        return pb.PushResult(accepted=self.accepted, applied=self.applied, version=self.version,
                             pending=self.pending, detail=self.detail)


class ParameterStore:
    """Weights by flattened name, a monotonically increasing version, and an optimizer over `trainable`."""

    def __init__(self, weights: Mapping[str, mx.array], trainable: Iterable[str] | None = None, *,
                 mode: str = "sync", workers: int = 1, max_staleness: int = 0, optimizer: str | None = "sgd",
                 learning_rate: float = 1e-3, state_dir: str | Path | None = None, version: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if optimizer is None and (mode != "sync" or state_dir is not None):
            raise ValueError("optimizer=None (the owner steps) is for sync mode without a state_dir only")
        if optimizer is not None and optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if workers < 1 or max_staleness < 0:
            raise ValueError(f"workers must be >= 1 and max_staleness >= 0, got {workers} and {max_staleness}")
        self.weights = dict(weights)
        mx.eval(list(self.weights.values()))  # MLX streams are per thread: no lazy graphs for RPC threads
        self.trainable = list(self.weights) if trainable is None else [n for n in self.weights if n in set(trainable)]
        self.mode, self.workers, self.max_staleness = mode, workers, max_staleness
        self.optimizer_name, self.learning_rate = optimizer, learning_rate
        self.optimizer = OPTIMIZERS[optimizer](learning_rate) if optimizer is not None else None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.version = version  # a learner resumed at step k serves version k
        self.encode_count = 0  # snapshots serialized so far (one per version and scope pulled)
        self._changed = threading.Condition()
        self._encode_lock = threading.Lock()
        self._snapshots: dict[int, codec.EncodedSnapshot] = {}
        self._pending: dict[str, None] = {}
        self._grad_sum: dict[str, mx.array] = {}
        self._recent: collections.OrderedDict[str, PushOutcome] = collections.OrderedDict()
        self._closed = False
        if self.state_dir is not None and (self.state_dir / STATE_SUBDIR).exists():
            self._restore(self.state_dir / STATE_SUBDIR)

    @classmethod
    def from_model(cls, model: nn.Module, **settings) -> ParameterStore:
        """Serve `model`'s parameters; its trainable ones (LoRA adapters after apply_lora) take gradients."""
        trainable = [name for name, _ in tree_flatten(model.trainable_parameters())]
        return cls(dict(tree_flatten(model.parameters())), trainable, **settings)

    # -- weights out -------------------------------------------------------------------------------

    def snapshot(self, scope: int = pb.SCOPE_FULL) -> codec.EncodedSnapshot:
        """The serialized current version; built by the first caller, shared by every later one."""
        with self._encode_lock:
            with self._changed:
                version, weights = self.version, self.weights
                cached = self._snapshots.get(scope)
            if cached is not None and cached.version == version:
                return cached
            encoded = codec.encode(self._scoped(weights, scope), version, scope, trainable=self.trainable)
            with self._changed:
                self.encode_count += 1
                if self.version == version:
                    self._snapshots[scope] = encoded
            return encoded

    def current(self, scope: int = pb.SCOPE_FULL) -> tuple[int, dict[str, mx.array], list[str]]:
        """The current version, its tensors in `scope` (evaluated, never changed later) and the trainable names."""
        with self._changed:
            return self.version, self._scoped(self.weights, scope), list(self.trainable)

    def _scoped(self, weights: dict[str, mx.array], scope: int) -> dict[str, mx.array]:
        names = self.trainable if scope == pb.SCOPE_TRAINABLE else list(weights)
        return {n: weights[n] for n in names}

    def tensor_specs(self) -> list[pb.TensorSpec]:
        with self._changed:
            return codec.tensor_specs(self.weights, self.trainable)

    def wait_for_version(self, after: int, timeout: float) -> int | None:
        """The current version once it is greater than `after`; None after `timeout` seconds or on close."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > after or self._closed, timeout)
            return self.version if self.version > after else None

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # -- weights in ----------------------------------------------------------------------------------

    def publish(self, weights: Mapping[str, mx.array]) -> int:
        """Replace some weights (a learner that steps itself) and publish them as the next version."""
        with self._changed:
            for name, value in weights.items():
                current = self.weights.get(name)
                if current is None or current.shape != value.shape:
                    raise GradientRejected(f"published tensor {name} is not a served parameter of that shape")
            mx.eval(list(weights.values()))
            _refuse_non_finite(weights, "published tensor")
            self._commit(dict(weights))
            return self.version

    def check_gradient_header(self, header: pb.SnapshotHeader) -> None:
        """Refuse a push whose tensors are not exactly the trainable parameters, before reading its chunks."""
        who = f"worker {header.worker_id or '?'}"
        if header.unchanged:
            raise GradientRejected(f"{who}: gradient push header is marked unchanged")
        sent = {spec.name: spec for spec in header.tensors}
        missing = [n for n in self.trainable if n not in sent]
        if missing:
            raise GradientRejected(f"{who}: gradient has no tensor {missing[0]} ({len(missing)} trainable missing)")
        for name, spec in sent.items():
            target = self.weights.get(name)
            if target is None or name not in self.trainable:
                raise GradientRejected(f"{who}: tensor {name} is not a trainable parameter")
            if tuple(spec.shape) != tuple(target.shape):
                raise GradientRejected(f"{who}: tensor {name} has shape {list(spec.shape)}, "
                                       f"parameter has {list(target.shape)}")
            if spec.dtype not in _FLOAT_DTYPES:
                raise GradientRejected(f"{who}: tensor {name} has dtype {spec.dtype}, gradients must be float")

    def recent_outcome(self, push_id: str) -> PushOutcome | None:
        with self._changed:
            return self._recent.get(push_id) if push_id else None

    def push(self, base_version: int, grads: Mapping[str, mx.array], worker_id: str = "",
             push_id: str = "") -> PushOutcome:
        """Take one worker's gradients, computed on `base_version`."""
        with self._changed:
            if push_id and push_id in self._recent:
                return self._recent[push_id]
            who = f"worker {worker_id or '?'}"
            _refuse_non_finite(grads, f"{who}: gradient tensor")
            if base_version > self.version:
                raise GradientRejected(f"{who}: gradient base version {base_version} is newer than "
                                       f"server version {self.version}")
            if self.mode == "async":
                behind = self.version - base_version
                if behind > self.max_staleness:
                    raise StaleGradient(f"{who}: gradient base version {base_version} is {behind} versions behind "
                                        f"server version {self.version} (max_staleness {self.max_staleness}); "
                                        f"pull and recompute")
                self._step(dict(grads))
                outcome = PushOutcome(True, True, self.version, 0)
            else:
                outcome = self._push_sync(base_version, grads, who, worker_id or uuid.uuid4().hex)
            if push_id:
                self._recent[push_id] = outcome
                while len(self._recent) > RECENT_PUSHES:
                    self._recent.popitem(last=False)
            return outcome

    def _push_sync(self, base_version: int, grads: Mapping[str, mx.array], who: str, worker: str) -> PushOutcome:
        if base_version != self.version:
            raise StaleGradient(f"{who}: gradient for version {base_version} arrived after the server moved to "
                                f"version {self.version}; pull and recompute")
        if worker in self._pending:
            raise DuplicateGradient(f"{who} already sent a gradient for version {self.version}")
        for name, grad in grads.items():
            grad = grad.astype(mx.float32)
            self._grad_sum[name] = self._grad_sum[name] + grad if name in self._grad_sum else grad
        mx.eval(list(self._grad_sum.values()))
        self._pending[worker] = None
        self._changed.notify_all()
        if self.optimizer is None or len(self._pending) < self.workers:
            return PushOutcome(True, False, self.version, len(self._pending))
        mean = {name: (total / self.workers).astype(self.weights[name].dtype) for name, total in self._grad_sum.items()}
        self._pending, self._grad_sum = {}, {}
        self._step(mean)
        return PushOutcome(True, True, self.version, 0)

    def pushed(self) -> list[str]:
        """Workers whose gradient for the current version is in (sync mode)."""
        with self._changed:
            return list(self._pending)

    def wait_for_push(self, count: int, timeout: float) -> list[str]:
        """The workers that pushed for the current version, once `count` have (or after `timeout` seconds)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._pending) >= count or self._closed, timeout)
            return list(self._pending)

    def take_mean(self, version: int) -> tuple[dict[str, mx.array], int]:
        """(mean of the gradients pushed for `version`, how many) for an owner that steps itself; clears them."""
        with self._changed:
            if version != self.version or not self._pending:
                raise StaleGradient(f"no gradients pushed for version {version} (server at {self.version}, "
                                    f"{len(self._pending)} pushed)")
            count = len(self._pending)
            mean = {name: (total / count).astype(self.weights[name].dtype) for name, total in self._grad_sum.items()}
            mx.eval(list(mean.values()))
            self._pending, self._grad_sum = {}, {}
            return mean, count

    def _step(self, grads: dict[str, mx.array]) -> None:
        params = {name: self.weights[name] for name in grads}
        saved_state = tree_map(lambda x: x, self.optimizer.state)  # arrays are immutable: a shallow copy suffices
        updated = self.optimizer.apply_gradients(grads, params)
        mx.eval(updated, self.optimizer.state)
        try:
            _refuse_non_finite(updated, "applying the gradients would make parameter")
        except GradientRejected:
            self.optimizer.state = saved_state
            raise
        self._commit(updated)

    def _commit(self, updated: dict[str, mx.array]) -> None:
        """Install new weights as the next version (caller holds the lock)."""
        weights = dict(self.weights)
        weights.update(updated)
        self.weights = weights  # a new dict: a snapshot being encoded keeps reading the old one
        self.version += 1
        self._snapshots = {}
        if self.state_dir is not None:
            self._save(self.state_dir / STATE_SUBDIR)
        self._changed.notify_all()

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    # -- state checkpoint ------------------------------------------------------------------------------

    def checkpoint(self) -> Path | None:
        if self.state_dir is None:
            return None
        with self._changed:
            self._save(self.state_dir / STATE_SUBDIR)
        return self.state_dir / STATE_SUBDIR

    def _save(self, path: Path) -> None:
        with atomic_dir(path) as tmp:
            save_safetensors(tmp / "weights.safetensors", self.weights)
            save_safetensors(tmp / "optimizer.safetensors", _flatten_optimizer_state(self.optimizer.state))
            write_json(tmp / "state.json", {
                "format": STATE_FORMAT, "version": self.version, "mode": self.mode,
                "optimizer": self.optimizer_name, "learning_rate": self.learning_rate,
                "trainable": self.trainable,
            })

    def _restore(self, path: Path) -> None:
        state = read_json(path / "state.json")
        if state.get("format") != STATE_FORMAT:
            raise ServerStateError(f"{path / 'state.json'}: unsupported format {state.get('format')!r}")
        if state.get("optimizer") != self.optimizer_name:
            raise ServerStateError(f"{path / 'state.json'}: optimizer {state.get('optimizer')!r} differs from "
                                   f"the requested {self.optimizer_name!r}")
        weights = mx.load(str(path / "weights.safetensors"))
        for name, value in self.weights.items():
            saved = weights.get(name)
            if saved is None or saved.shape != value.shape or saved.dtype != value.dtype:
                raise ServerStateError(f"{path / 'weights.safetensors'}: tensor {name} is missing or does not "
                                       f"match the served model")
        self.weights = {name: weights[name] for name in self.weights}
        self.optimizer.state = _unflatten_optimizer_state(mx.load(str(path / "optimizer.safetensors")))
        self.version = int(state["version"])
        mx.eval(list(self.weights.values()), self.optimizer.state)  # mx.load is lazy; RPC threads need values


def _refuse_non_finite(tensors: Mapping[str, mx.array], what: str) -> None:
    """`GradientRejected` naming the first tensor holding NaN or Inf (one fused check for all of them)."""
    names = [n for n, v in tensors.items() if mx.issubdtype(v.dtype, mx.floating)]
    if not names:
        return
    finite = mx.stack([mx.all(mx.isfinite(tensors[n])) for n in names])
    if not mx.all(finite).item():
        bad = names[int(mx.argmin(finite.astype(mx.int32)).item())]
        raise GradientRejected(f"{what} {bad} holds NaN or Inf; refused")


def _flatten_optimizer_state(state: dict) -> dict[str, mx.array]:
    """Optimizer state keyed by flat parameter names: `name@slot` per parameter, plain keys otherwise."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update({f"{key}@{slot}": v for slot, v in value.items()})
        else:
            flat[key] = value
    return flat


def _unflatten_optimizer_state(flat: dict[str, mx.array]) -> dict:
    state: dict = {}
    for key, value in flat.items():
        if "@" in key:
            name, slot = key.rsplit("@", 1)
            state.setdefault(name, {})[slot] = value
        else:
            state[key] = value
    return state


# -- gRPC: ParameterServer ---------------------------------------------------------------------------


class ParameterService:
    """RPC handlers over a `ParameterStore`. PullWeights answers with pre-serialized messages.

    A WatchVersions stream ends by itself after `watch_window_s` (the client reopens it), so it never
    reaches the server-side deadline at which the guard would cancel it. ShareWeights hands a loopback
    peer the current snapshot in sealed shared memory (`shared`), one copy per version for the host;
    OpenTransfer hands any caller a ticket for the snapshot on the transfer socket (`transfer`), if there is one.
    """

    def __init__(self, store: ParameterStore, watch_poll_s: float = 1.0, watch_window_s: float = 60.0,
                 transfer: TransferListener | None = None):
        self.store = store
        self.watch_poll_s, self.watch_window_s = watch_poll_s, watch_window_s
        self.shared = SharedSnapshots(store.current)
        self.transfer = transfer

    def GetServerInfo(self, request, context):
        store = self.store
        return pb.ServerInfo(version=store.version, tensors=store.tensor_specs(), mode=store.mode,
                             workers=store.workers, max_staleness=store.max_staleness,
                             optimizer=store.optimizer_name or "owner", pending_gradients=store.pending())

    def PullWeights(self, request, context):
        if request.scope not in (pb.SCOPE_FULL, pb.SCOPE_TRAINABLE):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown scope {request.scope}")
        version = self.store.version
        if request.have_version >= version:
            yield codec.unchanged_header(version, request.scope)
            return
        yield from self.store.snapshot(request.scope).parts

    def ShareWeights(self, request, context):
        if request.scope not in (pb.SCOPE_FULL, pb.SCOPE_TRAINABLE):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown scope {request.scope}")
        if not _is_loopback_peer(context.peer()):
            return pb.SharedSnapshot(available=False, reason="shared memory is for callers on the server's host")
        version = self.store.version
        if request.have_version >= version:
            return pb.SharedSnapshot(available=True, header=pb.SnapshotHeader(
                version=version, scope=request.scope, unchanged=True))
        return self.shared.share(request.scope)

    def OpenTransfer(self, request, context):
        if request.scope not in (pb.SCOPE_FULL, pb.SCOPE_TRAINABLE):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown scope {request.scope}")
        if self.transfer is None:
            return pb.TransferTicket(available=False, reason="this server has no transfer listener")
        version = self.store.version
        if request.have_version >= version:
            return pb.TransferTicket(available=True, header=pb.SnapshotHeader(
                version=version, scope=request.scope, unchanged=True))
        encoded = self.store.snapshot(request.scope)
        return pb.TransferTicket(available=True, header=encoded.header, port=self.transfer.port,
                                 ticket=self.transfer.issue(encoded), expires_in_s=self.transfer.ttl_s)

    def WatchVersions(self, request, context):
        last, end = request.after_version, time.monotonic() + self.watch_window_s
        while context.is_active() and not self.store._closed:
            left = end - time.monotonic()
            if left <= 0:
                return
            version = self.store.wait_for_version(last, min(self.watch_poll_s, left))
            if version is not None:
                yield pb.VersionEvent(version=version).SerializeToString()
                last = version

    def PushGradients(self, request_iterator, context):
        parts = iter(request_iterator)
        decoder = codec.SnapshotDecoder(accept_header=self.store.check_gradient_header)
        try:
            first = next(parts, None)
            if first is None:
                raise codec.CodecError("gradient push has no header")
            header = codec.parse_part(first).header
            done = self.store.recent_outcome(header.push_id)
            if done is not None:
                return done.to_proto()
            decoder.feed(first)
            for part in parts:
                decoder.feed(part)
            grads = decoder.finish()
            outcome = self.store.push(header.version, grads, header.worker_id, header.push_id)
        except (codec.CodecError, GradientRejected) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{context.peer()}: {e}")
        except StaleGradient as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except DuplicateGradient as e:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        finally:
            decoder.close()
        return outcome.to_proto()

    def handler(self) -> grpc.GenericRpcHandler:
        # Responses of PullWeights/WatchVersions are already bytes: no response serializer.
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetServerInfo": grpc.unary_unary_rpc_method_handler(
                self.GetServerInfo, request_deserializer=pb.ServerInfoRequest.FromString,
                response_serializer=pb.ServerInfo.SerializeToString),
            "PullWeights": grpc.unary_stream_rpc_method_handler(
                self.PullWeights, request_deserializer=pb.PullRequest.FromString),
            "WatchVersions": grpc.unary_stream_rpc_method_handler(
                self.WatchVersions, request_deserializer=pb.WatchRequest.FromString),
            "ShareWeights": grpc.unary_unary_rpc_method_handler(
                self.ShareWeights, request_deserializer=pb.PullRequest.FromString,
                response_serializer=pb.SharedSnapshot.SerializeToString),
            "OpenTransfer": grpc.unary_unary_rpc_method_handler(
                self.OpenTransfer, request_deserializer=pb.PullRequest.FromString,
                response_serializer=pb.TransferTicket.SerializeToString),
            "PushGradients": grpc.stream_unary_rpc_method_handler(
                self.PushGradients, request_deserializer=None,  # raw: the codec reads chunks without copies
                response_serializer=pb.PushResult.SerializeToString),
        })


def _is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (ipv4:127.0.0.1:5000, ipv6:[::1]:5000) is this host's loopback."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return False
    return auth.is_loopback(rest.rsplit(":", 1)[0].strip("[]"))


# -- the server ----------------------------------------------------------------------------------------


class BindError(LazarusError, OSError):
    """The server could not listen on its address; names the address and the reason."""


class RunningServer:
    """A started gRPC server; `port` is the bound port (useful after binding port 0)."""

    def __init__(self, server: grpc.Server, store: ParameterStore, hub: ExperienceHub,
                 health_servicer: health.HealthServicer, host: str, port: int, guard: CallGuard | None = None,
                 shared: SharedSnapshots | None = None, transfer: TransferListener | None = None):
        self.server, self.store, self.hub, self.health = server, store, hub, health_servicer
        self.host, self.port, self.guard, self.shared = host, port, guard, shared
        self.transfer = transfer

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.store.close()
        self.server.stop(grace).wait()
        if self.guard is not None:
            self.guard.stop()
        if self.shared is not None:
            self.shared.close()
        if self.transfer is not None:
            self.transfer.close()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(grace=0)


def serve(store: ParameterStore, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
          hub: ExperienceHub | None = None, run: RunSpec | None = None, max_workers: int = 48,
          max_message_bytes: int = auth.MAX_MESSAGE_BYTES, limits: Mapping[str, MethodLimit] | None = None,
          log: Callable[[str], None] | None = None,
          services: Iterable[grpc.GenericRpcHandler] = (), transfer_port: int | None = 0) -> RunningServer:
    """Start serving `store` (and the Experience service) on host:port; port 0 lets the OS pick.

    Every call but health's runs under `guard.CallGuard`: per-method concurrency `limits` (merged over
    `guard.DEFAULT_LIMITS`), a server-side deadline and idle timeout, and a few of the `max_workers`
    threads kept free for health checks. The port is bound without SO_REUSEPORT, so a second server on
    the same port fails with "address already in use" instead of sharing its clients. `services`: more
    handlers on the same server, under the same guard and token (the data-parallel replicas' batches).
    `transfer_port`: where the transfer socket for cross-host pulls listens, on `host` (0: a free port;
    None: no transfer socket, remote clients stream over gRPC).
    """
    auth.check_bind(host, token)
    codec.keep_message_buffers()
    if (tls_cert is None) != (tls_key is None):
        raise auth.TLSFileError("TLS needs both a certificate and a key file")
    credentials = auth.server_credentials(tls_cert, tls_key) if tls_cert is not None else None
    guard = CallGuard(max_workers, limits)
    # The guard runs first, so it also sees (and logs) the calls the token interceptor refuses.
    interceptors = [guard] + ([auth.TokenInterceptor(token)] if token else [])
    options = auth.message_options(max_message_bytes) + [
        ("grpc.so_reuseport", 0),
    ]
    # maximum_concurrent_rpcs bounds what gRPC queues for the pool; past it gRPC answers RESOURCE_EXHAUSTED.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lazarus-ps"),
                         interceptors=interceptors, options=options, maximum_concurrent_rpcs=8 * max_workers)
    watch_window_s = min(60.0, guard.limits["WatchVersions"].deadline_s / 2)
    transfer = None
    if transfer_port is not None:
        tls = auth.server_ssl_context(tls_cert, tls_key) if tls_cert is not None else None
        try:
            transfer = TransferListener(host, transfer_port, tls)
        except OSError as e:
            guard.stop()
            cause = _bind_failure(host, transfer_port) or e.strerror or str(e)
            raise BindError(f"cannot listen for weight transfers on {host}:{transfer_port}: {cause}") from None
    parameters = ParameterService(store, watch_window_s=watch_window_s, transfer=transfer)
    server.add_generic_rpc_handlers((parameters.handler(), *services))
    hub = hub or ExperienceHub(policy_version=lambda: store.version)
    experience_pb2_grpc.add_ExperienceServicer_to_server(ExperienceService(hub, run, log), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Try the address with a plain socket first: gRPC only says that binding failed (and logs a line of its own).
    cause = _bind_failure(host, port) if port else None
    bound = 0
    if cause is None:
        try:
            bound = server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
        except RuntimeError:
            pass
        if not bound:
            cause = _bind_failure(host, port) or "gRPC refused the address (a plain socket could bind it)"
    if cause is not None:
        guard.stop()
        if transfer is not None:
            transfer.close()
        raise BindError(f"cannot listen on {bind}: {cause}")
    server.start()
    for service in ("", SERVICE, "lazarus.v1.Experience"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, store, hub, health_servicer, host, bound, guard, parameters.shared, transfer)


def _bind_failure(host: str, port: int) -> str | None:
    """Why binding host:port fails for a plain socket (as gRPC binds it), or None if it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve {host} ({e.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does, so TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return "address already in use (is another server running on that port?)"
            return e.strerror or str(e)
    return None
