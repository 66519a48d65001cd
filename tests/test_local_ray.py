"""The local search's Ray (``connect(None)``) listens on loopback only, and ``hpo/cluster.py`` uses
Ray's private token-auth helper only when joining a cluster, behind a guarded import.

The socket check reads ``/proc`` (psutil is not a dependency): every TCP socket in LISTEN state
that belongs to this process or one of its descendants (the GCS, raylet and workers that
``ray.init`` starts) must be bound to a loopback address. Other Ray instances on the machine (a CI
run beside this one) are not ours and are left out by the process tree.
"""

from __future__ import annotations

import ast
import inspect
import ipaddress
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from hpo import cluster

REPO = Path(__file__).resolve().parents[1]
TOKEN_MODULE = "ray._private.authentication.authentication_token_setup"
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def _parse_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``/proc/net/tcp`` writes an address as 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    native = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(native)


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, how gRPC binds 127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state in this network namespace."""
    sockets: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:] if Path(table).exists() else []
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == LISTEN:
                host, port = local.split(":")
                sockets[inode] = (str(_parse_address(host)), int(port, 16))
    return sockets


def _process_tree(root: int) -> set[int]:
    """``root`` and all its descendants (parent links from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process ended meanwhile
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _our_listeners() -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of each listening socket of this process tree."""
    sockets = _listening_sockets()
    found = []
    for pid in sorted(_process_tree(os.getpid())):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        for inode in _socket_inodes(pid) & sockets.keys():
            found.append((pid, name, *sockets[inode]))
    return found


def test_the_proc_address_parser() -> None:
    assert _parse_address("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert _parse_address("00000000") == ipaddress.ip_address("0.0.0.0")
    assert _parse_address("0000000000000000FFFF00000100007F") == ipaddress.ip_address("::ffff:127.0.0.1")
    assert _is_loopback(_parse_address("0000000000000000FFFF00000100007F"))
    assert not _is_loopback(_parse_address("00000000000000000000000000000000"))  # ::, every interface


@pytest.fixture
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        ray.shutdown()
    auth_mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init sets it to token (Ray 2.60)
    cluster.connect(None)
    try:
        yield
    finally:
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(300)
def test_a_local_search_ray_listens_on_loopback_only(local_ray: None) -> None:
    @ray.remote
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    # Two tasks: the workers' own gRPC servers are up too when the sockets are read.
    assert ray.get([node_ip.remote() for _ in range(2)]) == [cluster.LOOPBACK] * 2
    listeners = _our_listeners()
    names = {name for _, name, _, _ in listeners}
    # The parser found Ray's servers (an empty list would pass the check below vacuously).
    assert {"gcs_server", "raylet"} <= names, listeners
    exposed = [entry for entry in listeners if not _is_loopback(ipaddress.ip_address(entry[2]))]
    assert not exposed, f"listening on a non-loopback address: {exposed}"
    # Only the ray.init call ran in Ray's single-machine mode: a later connect(address) in this
    # process resolves this node's address as usual.
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER is True


class _InitCalls:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> None:
        self.calls.append(kwargs)


def test_the_loopback_mode_is_switched_on_for_the_init_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants

    seen = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append((kwargs, ray_constants.ENABLE_RAY_CLUSTER)))
    cluster.connect(None)
    ((kwargs, mode_during_init),) = seen
    assert kwargs["_node_ip_address"] == "127.0.0.1" and mode_during_init is False
    assert kwargs["address"] == "local"  # a new Ray, never one that RAY_ADDRESS or `ray start` left
    assert ray_constants.ENABLE_RAY_CLUSTER is True

    def failing_init(**kwargs) -> None:
        raise RuntimeError("init failed")

    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(RuntimeError, match="init failed"):
        cluster.connect(None)
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # restored on failure too


def test_a_ray_without_the_loopback_switch_starts_as_before_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants

    init = _InitCalls()
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delattr(ray_constants, "ENABLE_RAY_CLUSTER")
    with pytest.warns(RuntimeWarning, match="cannot bind the local Ray to loopback"):
        cluster.connect(None)
    assert init.calls == [{"address": "local", "include_dashboard": False, "configure_logging": False}]


def test_no_private_ray_module_is_imported_when_hpo_cluster_loads() -> None:
    tree = ast.parse((REPO / "hpo" / "cluster.py").read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert names and not [name for name in names if "._private" in name or name.startswith("_private")], names


def test_this_ray_has_the_token_helper_connect_imports() -> None:
    # The Ray that pyproject allows and the tests run (2.60): the helper is there, with the
    # argument connect() passes. A Ray without it is the guarded case below.
    module = pytest.importorskip(TOKEN_MODULE)
    assert "warn_if_disabled" in inspect.signature(module.maybe_enable_token_auth_if_token_available).parameters


def test_joining_calls_rays_token_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.ModuleType(TOKEN_MODULE)
    fake.maybe_enable_token_auth_if_token_available = lambda **kwargs: calls.append(kwargs)
    monkeypatch.setitem(sys.modules, TOKEN_MODULE, fake)
    init = _InitCalls()
    monkeypatch.setattr(ray, "init", init)
    cluster.connect("10.0.0.10:6379")
    assert calls == [{"warn_if_disabled": False}]
    assert init.calls[0]["address"] == "10.0.0.10:6379" and "runtime_env" in init.calls[0]


def test_joining_with_a_ray_without_token_auth_leaves_the_mode_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, TOKEN_MODULE, None)  # `import` of it raises ImportError
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    init = _InitCalls()
    monkeypatch.setattr(ray, "init", init)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster.connect("10.0.0.10:6379")
    assert "RAY_AUTH_MODE" not in os.environ
    assert [call["address"] for call in init.calls] == ["10.0.0.10:6379"]
