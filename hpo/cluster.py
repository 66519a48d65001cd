"""Connecting the search driver to Ray, and what a trial needs to share a node's GPU.

* :func:`connect` starts a local Ray (no ``--address``) or joins a running cluster. On a cluster
  the trials run in worker processes on other machines, so the driver ships its code to them in a
  runtime environment: ``working_dir`` = the checkout the driver runs from, less data, results,
  MLflow stores, virtual environments and weights (:data:`EXCLUDES`, plus the checkout's
  ``.gitignore``, which Ray reads too). ``working_dir`` rather than ``py_modules``: only then does
  Ray not put the driver's current and script directories first on the workers' ``sys.path``,
  where a stale copy of the checkout at the same path on a worker would shadow the shipped code.
  Outside a checkout (the packages installed) ``py_modules`` ships ``model`` and ``hpo``.
  The workers' dependencies (torch, Ray, ...) come from the nodes' own install (cluster.yaml).
* Token authentication (on by default for ``ray start`` in Ray 2.60): every process, the driver
  included, needs the cluster's token. Ray itself switches token mode on for ``--address auto``
  when it finds a token, but not for an explicit address; :func:`connect` does the same for both,
  with Ray's own function for it (not public in Ray 2.60: imported when joining, not at load).
* A local search (no address) starts a Ray that listens on loopback only (:func:`start_local_ray`).
* :func:`cap_gpu_memory`: a trial with a fraction of a GPU caps its CUDA allocator at that
  fraction, so trials sharing a GPU fail alone with an OOM of their own rather than take the
  memory their neighbours were promised.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Protocol, cast

import ray
from ray.exceptions import AuthenticationError

import hpo
import model
from model.gpu_share import CUDA_CONTEXT_RESERVE_BYTES, cap_gpu_memory, memory_cap

__all__ = [
    "CUDA_CONTEXT_RESERVE_BYTES",
    "EXCLUDES",
    "SHIPPED_PACKAGES",
    "ClusterConnectionError",
    "cap_gpu_memory",
    "checkout_root",
    "connect",
    "memory_cap",
    "runtime_env",
    "start_local_ray",
]

#: The packages every trial imports.
SHIPPED_PACKAGES: tuple[ModuleType, ...] = (model, hpo)
#: Not shipped (gitignore syntax, relative to the checkout; a leading / anchors at its root, so
#: that ``/data/`` leaves the ``model/data`` package alone).
EXCLUDES: tuple[str, ...] = (
    ".git/", ".venv/", "venv/", "__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/", ".ruff_cache/",
    "/data/", "/runs/", "/ray_results/", "/mlruns/", "/bench/results/", "*.db",
    "*.pt", "*.pth", "*.ckpt", "*.arrow",
)  # fmt: skip


class ClusterConnectionError(RuntimeError):
    """The driver could not join the Ray cluster (address, network or token)."""


def runtime_env() -> dict[str, str | list[str]]:
    """The runtime environment that ships this code to a cluster's workers (see the module's doc)."""
    root = checkout_root()
    if root is not None:
        return {"working_dir": str(root), "excludes": list(EXCLUDES)}
    return {"py_modules": [_package_dir(m) for m in SHIPPED_PACKAGES], "excludes": list(EXCLUDES)}


def checkout_root() -> Path | None:
    """The repository checkout holding the ``model`` and ``hpo`` packages, or None if installed."""
    roots = {Path(_package_dir(m)).parent for m in SHIPPED_PACKAGES}
    root = roots.pop() if len(roots) == 1 else None
    return root if root is not None and (root / "pyproject.toml").is_file() else None


def connect(address: str | None) -> None:
    """Start a local Ray (``address`` None) or join the cluster at ``address`` (``auto`` on a head node).

    A local Ray listens on loopback only (:func:`start_local_ray`). Joining ships the code
    (:func:`runtime_env`) and switches Ray's token mode on when a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is
    not set.

    Raises:
        ClusterConnectionError: the cluster refused the driver or could not be reached.
    """
    if address is None:
        start_local_ray()
        return
    _enable_token_auth_if_token_available()
    try:
        ray.init(address=address, runtime_env=runtime_env(), configure_logging=False)
    except ConnectionError as exc:
        if _refused_token(exc):
            raise ClusterConnectionError(
                f"the Ray cluster at {address!r} refused this driver's token: give the driver the cluster's token "
                "(RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token; `ray get-auth-token` "
                "on the head prints it)"
            ) from exc
        raise ClusterConnectionError(f"could not join the Ray cluster at {address!r}: {exc}") from exc


LOOPBACK = "127.0.0.1"


class _RayConstants(Protocol):
    """What :func:`start_local_ray` uses of Ray's private ``ray._private.ray_constants`` module."""

    ENABLE_RAY_CLUSTER: bool


def start_local_ray() -> None:
    """Start a local Ray for this process whose every server listens on loopback only.

    Always a new one (``address="local"``): not a cluster that ``RAY_ADDRESS`` or a ``ray start``
    on this machine would otherwise make ``ray.init()`` join (pass ``--address`` for that).

    Ray's servers (GCS, raylet, object manager, the workers' and driver's own gRPC servers, the
    runtime-env agent) listen on all interfaces unless the node's IP is ``127.0.0.1``; Ray 2.60 has
    no public setting for that on Linux: ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten
    to the machine's outward address (``services.resolve_ip_for_localhost``) unless Ray runs in its
    single-machine mode (``ray_constants.ENABLE_RAY_CLUSTER`` False, the default on macOS and
    Windows; read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at ``import ray``). So that mode
    is switched on for the ``ray.init`` call only and switched back after: a later
    ``connect(address)`` in this process still joins a cluster at the machine's address. If a Ray
    release drops that constant, the local Ray starts as before (all interfaces, behind Ray's token
    authentication) with a warning; ``tests/test_local_ray.py`` checks the listening sockets.
    """
    ray_constants: _RayConstants | None
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - depends on the Ray release
        ray_constants = None
    if ray_constants is None or not isinstance(getattr(ray_constants, "ENABLE_RAY_CLUSTER", None), bool):
        warnings.warn(
            f"Ray {ray.__version__}: cannot bind the local Ray to loopback (no ray_constants.ENABLE_RAY_CLUSTER); "
            "it listens on all interfaces",
            RuntimeWarning,
            stacklevel=2,
        )
        ray.init(address="local", include_dashboard=False, configure_logging=False)
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", include_dashboard=False, configure_logging=False, _node_ip_address=LOOPBACK)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _enable_token_auth_if_token_available() -> None:
    """Ray's own rule for ``--address auto`` (token mode when a token is found and ``RAY_AUTH_MODE``
    is unset), applied to an explicit address too; it also refreshes Ray's already-loaded config.

    The function lives in a private Ray module (no public equivalent in Ray 2.60), so it is imported
    here, when joining a cluster, and not when this module loads: a Ray without it (token auth not
    in that release, or moved) leaves the auth mode to ``RAY_AUTH_MODE`` as the user set it.
    """
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _package_dir(module: ModuleType) -> str:
    return str(Path(cast(str, module.__file__)).resolve().parent)  # a package imported from its files: never None


def _refused_token(exc: BaseException | None) -> bool:
    """Ray reports a refused token as a ConnectionError whose causes name it (in their text)."""
    while exc is not None:
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
