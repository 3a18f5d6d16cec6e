"""Ray for the commands that spread work over processes or machines (`rtdiff eval --ray`,
`rtdiff bench eval`, `rtdiff bench deadline --ray`): start or join a cluster, errors in one line.

`--ray` with no address starts a local instance sized to this machine
(`ray.init(address="local", num_cpus=os.cpu_count())`, no dashboard), even where a cluster
runs already; `--ray auto` joins the cluster `ray start` made on this machine (or the one
`RAY_ADDRESS` names); `--ray HOST:PORT` joins a head node's GCS, `--ray ray://HOST:PORT` a Ray
Client server. A HOST:PORT is tried with a plain TCP connect first (`CONNECT_TIMEOUT_S`):
Ray itself retries an unreachable address for minutes before it gives up.

Workers import this repository's modules by name (the remote functions are module-level
functions, pickled by reference), so every node needs rtdiff installed: a local instance's
workers use this interpreter and its editable install; a cluster's nodes need
`pip install '.[scale]'` (docs/scale.md).

Ray is imported inside the functions only: nothing imports it until a command asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from runtime.cli import CliError

LOCAL = "local"  # what `--ray` with no address means
CONNECT_TIMEOUT_S = 3.0
INSTALL_HINT = "pip install 'rtdiff[scale]'"


def import_ray() -> Any:
    """The `ray` module, or a one-line CliError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CliError(f"--ray needs ray, which is not installed ({INSTALL_HINT})") from None
    return ray


def check_address(address: str) -> None:
    """A one-line CliError unless `address` is `local`, `auto`, or a HOST:PORT (optionally
    `ray://`) that accepts a TCP connection."""
    if address in (LOCAL, "auto"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise CliError(f"--ray takes nothing (a local instance), auto, HOST:PORT or "
                       f"ray://HOST:PORT; got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)),
                                      timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise CliError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def ray_session(address: str, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, initialised for `address` (`local`: a fresh local instance of `num_cpus` CPUs,
    default this machine's); yields the `ray` module and shuts Ray down at the end. Where Ray
    is initialised already (a test's fixture, a notebook), that session is used and left
    running."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == LOCAL:
        kw.update(address=LOCAL, num_cpus=num_cpus or os.cpu_count() or 1)
    else:
        kw.update(address=address)
    try:
        ray.init(**kw)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot start or join Ray at {address}: {reason}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_cpus(ray: Any) -> int:
    """The CPUs the cluster has for tasks (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def node() -> dict[str, str]:
    """Where this code runs: the Ray node id (when inside a Ray worker) and the hostname."""
    out = {"hostname": socket.gethostname()}
    with contextlib.suppress(ImportError):
        import ray

        if ray.is_initialized():
            out["node_id"] = ray.get_runtime_context().get_node_id()
    return out


def task_error(exc: BaseException) -> str:
    """One line for a Ray task that failed: the exception raised inside it (a RayTaskError's
    cause), or why the task could not finish (a worker that died on every try)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
