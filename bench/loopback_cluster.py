"""A real multi-node Ray cluster on this one machine (loopback), for tests and benchmarks.

Each node is a separate ``ray start`` process group with its own temporary directory, free ports
and a fixed number of CPUs; token authentication is on (``RAY_AUTH_MODE=token`` and our own token
file). The driver joins at 127.0.0.1; Ray advertises the nodes at the machine's address, so they
share an IP and are told apart by node id. Nothing here touches other Ray instances on the
machine: teardown kills our own process groups (and any process still naming our directory).
Used by ``tests/test_cluster.py`` and ``bench/scaling.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent

__all__ = ["BIN", "Cluster", "Node", "RayStartError", "free_port", "kill_group", "ray_start", "token_env"]


class RayStartError(RuntimeError):
    """``ray start`` failed; the message carries its command and output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Node:
    """One ``ray start`` on this machine: its session (and process group) id and temporary directory."""

    pgid: int
    temp_dir: Path

    @property
    def node_id(self) -> str:
        # The node writes its ports to files named after its id in its session directory.
        found = {p.name.rsplit("_", 1)[1] for p in (self.temp_dir / "session_latest").glob("*_port_*")}
        assert len(found) == 1, f"cannot tell the node id of the Ray node in {self.temp_dir}: {found}"
        return found.pop()

    def kill(self) -> None:
        """Lose the node: SIGKILL its raylet, agents and workers (every process of its session).

        Ray moves each worker process into a process group of its own, so killing the node's
        group alone would leave the trials' actors running, reporting epochs from a "lost" node
        until they notice their raylet is gone; they stay in the node's session, though.
        """
        kill_group(self.pgid)
        for pid in _pids():
            try:
                if os.getsid(pid) == self.pgid or str(self.temp_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def stop(self) -> None:
        """Shut the node down (SIGTERM: the raylet tells the head it leaves), then kill what is left."""
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_sid(pid) == self.pgid for pid in _pids()):
            time.sleep(0.5)
        self.kill()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head: Node


def token_env(token_dir: Path) -> dict[str, str]:
    """The environment of every process of the cluster: token auth on, a fresh token in ``token_dir``."""
    token = token_dir / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        # The head notices a lost node in about 3 s rather than Ray's default 30.
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def ray_start(args: list[str], env: dict[str, str], num_cpus: int = 1) -> Node:
    """``ray start ARGS`` in a process group of its own; raises :class:`RayStartError` if it fails."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh2-", dir="/tmp"))  # short: Ray's socket paths
    ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port", "--node-manager-port", "--object-manager-port"]  # fmt: skip
    cmd = [str(BIN / "ray"), "start", *args, "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir), "--disable-usage-stats"]
    for flag in ports:
        cmd += [flag, str(free_port())]
    # Its own session: the nodes' processes stay in this process group, which teardown kills.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = Node(proc.pid, temp_dir)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        node.kill()
        raise
    if proc.returncode != 0:
        node.kill()
        raise RayStartError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return node


def start_head(env: dict[str, str], num_cpus: int = 1) -> Cluster:
    """A head node (no dashboard, custom resource ``head``) at 127.0.0.1 on a free port."""
    port = free_port()
    head = ray_start(["--head", "--port", str(port), "--include-dashboard", "false",
                      "--dashboard-port", str(free_port()), "--resources", '{"head": 1}'], env, num_cpus)  # fmt: skip
    return Cluster(f"127.0.0.1:{port}", env, head)


def add_worker(cluster: Cluster, num_cpus: int = 1) -> Node:
    """A worker node (custom resource ``worker``) joined to ``cluster``."""
    return ray_start(["--address", cluster.address, "--resources", '{"worker": 1}'], cluster.env, num_cpus)


def stop_head(cluster: Cluster) -> None:
    cluster.head.kill()  # the last node: nobody left to tell
    shutil.rmtree(cluster.head.temp_dir, ignore_errors=True)
