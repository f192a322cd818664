"""Joining a Ray cluster: the run's own, or the one `--address` names, and never the wrong one.

An address that does not answer, or a cluster that refuses this driver (Ray 2.60+ token
authentication), is a UsageError of one line before anything is stored: Ray itself would retry
for 20 s, write a warning a second to stderr and end with "Failed to connect", and without an
address it would start a cluster of its own that nobody asked for.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from autotuner.errors import UsageError

CONNECT_TIMEOUT_S = 5.0
DEFAULT_PORT = 6379
AUTH_REFUSED = ("Authentication token is missing or incorrect", "InvalidAuthToken", "Unauthenticated")
TOKEN_STEPS = (
    "set RAY_AUTH_MODE=token and the cluster's token here (RAY_AUTH_TOKEN=..., or the head's "
    "~/.ray/auth_token copied to this machine)"
)


def host_port(address: str) -> tuple[str, int]:
    """HOST and PORT of 'HOST:PORT', 'HOST' (Ray's port 6379) or 'ray://HOST:PORT'."""
    rest = address.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    if not colon:
        return rest, DEFAULT_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UsageError(
            f"--address {address!r}: expected HOST:PORT (the head's `ray start --port`)"
        ) from None


def resolve(ray: Any, address: str) -> str:
    """'auto' as Ray reads it (RAY_ADDRESS, else the last `ray start` cluster of this machine)."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address  # noqa: PLC0415 (heavy: ray)

        found = canonicalize_bootstrap_address("auto")
    except Exception as e:  # noqa: BLE001 - Ray's own lookup, one line whatever it raises
        raise UsageError(f"--address auto: {_first(e)}") from None
    if not found:
        raise UsageError(
            "--address auto: no Ray cluster was started on this machine (RAY_ADDRESS is unset and "
            "`ray start` recorded none); give the head's HOST:PORT"
        )
    return str(found)


def check_answers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """UsageError unless something accepts a TCP connection at the address's port."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = f"no answer in {timeout_s:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise UsageError(
            f"the Ray cluster at {address} does not answer ({why}): is `ray start --head "
            f"--port={port}` running there, and port {port} open to this machine?"
        ) from None


@contextlib.contextmanager
def _stderr_kept() -> Iterator[list[str]]:
    """Ray's C++ client writes its retries to file descriptor 2; keep them (the caller reads
    them for the reason) instead of showing them. The list holds the text once the block ends."""
    kept: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            kept.append(buf.read().decode(errors="replace"))


def join(ray: Any, address: str | None, init_kwargs: dict[str, Any]) -> None:
    """ray.init on the named cluster (None: a local cluster of this run's own), or UsageError."""
    if address is None:
        # A cluster of this run's own. Ray would otherwise attach to RAY_ADDRESS or to the
        # last `ray start` cluster of this machine, even a dead one.
        ray.init(address="local", **init_kwargs)
        return
    target = resolve(ray, address)
    check_answers(target)
    with _stderr_kept() as said:
        try:
            ray.init(address=target, **init_kwargs)
            failure: BaseException | None = None
        except Exception as e:  # noqa: BLE001 - classified below, one line
            failure = e
    if failure is None:
        return
    with contextlib.suppress(Exception):
        ray.shutdown()
    text = f"{failure}\n{''.join(said)}"
    auth_error = getattr(getattr(ray, "exceptions", None), "AuthenticationError", ())
    if isinstance(failure, auth_error) or any(marker in text for marker in AUTH_REFUSED):
        raise UsageError(
            f"the Ray cluster at {address} refused this driver (Authentication token is missing "
            f"or incorrect): {TOKEN_STEPS}"
        ) from None
    raise UsageError(f"could not join the Ray cluster at {address}: {_first(failure)}") from None


def describe(ray: Any, address: str | None, nodes: list[Any], joined_before: bool = False) -> str:
    """The run's first line: which cluster, and what it holds."""
    cpus = sum(n.cpus for n in nodes)
    gpus = sum(n.gpus for n in nodes)
    holds = f"{len(nodes)} node(s), {cpus} CPU(s), {gpus} GPU(s)"
    if joined_before:  # the Python API, inside a process that called ray.init itself
        return f"ray: the cluster this process had joined already: {holds}"
    if address is None:
        return f"ray: a local cluster of this run's own (no --address): {holds}"
    try:
        where = ray.get_runtime_context().gcs_address or address
    except Exception:  # noqa: BLE001 - Ray Client's context may not tell; the address does
        where = address
    session = session_name(ray)
    return f"ray: joined the cluster at {where}" + (f" ({session})" if session else "") + f": {holds}"


def session_name(ray: Any) -> str:
    """The cluster's session (one per `ray start --head`), where Ray tells it; else ''."""
    try:
        return str(ray._private.worker.global_worker.node.session_name)
    except Exception:  # noqa: BLE001 - a private attribute of Ray's; only a label
        return ""


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


__all__ = ["check_answers", "describe", "host_port", "join", "resolve", "session_name"]
