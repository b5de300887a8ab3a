"""`clustune dashboard` serves the experiment's study on 127.0.0.1 only, unless told otherwise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode(hex_addr: str) -> str:
    """An address as /proc/net/tcp{,6} write it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def _listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on port."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(_decode(address))
    return found


def _other_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def _dashboard(experiment: Path, port: int, log: Path) -> subprocess.Popen:
    """`clustune dashboard EXPERIMENT --port PORT`, its output in log."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "search.cli", "dashboard", str(experiment),
             "--port", str(port)], env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            stdout=out, stderr=subprocess.STDOUT)


def test_dashboard_listens_on_localhost_only(finished_experiment, tmp_path):
    port = _free_port()
    log = tmp_path / "dashboard.log"
    server = _dashboard(finished_experiment.path, port, log)
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the dashboard never started listening"
            time.sleep(0.2)
        assert _listening(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=30) as page:
            assert page.status == 200
        other = _other_address()
        if other is not None:
            with socket.socket() as s:
                s.settimeout(5)
                assert s.connect_ex((other, port)) != 0, f"reachable on {other}:{port}"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert not _listening(port)


def test_the_tensorboard_command_it_prints_starts(finished_experiment, tmp_path):
    """The set-up installs the TensorBoard viewer, and the command `clustune dashboard` (and
    the search, and the README) prints serves the experiment's logs."""
    port, dash_port = _free_port(), _free_port()
    log = tmp_path / "dashboard.log"
    dashboard = _dashboard(finished_experiment.path, dash_port, log)
    try:
        # Ctrl-C once it serves: a SIGINT while optuna-dashboard sets up its storage can be
        # swallowed there (seen once in CI: the server then started and never stopped)
        deadline = time.monotonic() + 120
        while not _listening(dash_port):
            assert dashboard.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        dashboard.send_signal(signal.SIGINT)
        try:
            dashboard.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dashboard.kill()
            dashboard.wait()
    command = next(line for line in log.read_text().splitlines()
                   if "tensorboard --logdir" in line).split("TensorBoard:", 1)[1].split()
    assert command[:2] == ["tensorboard", "--logdir"]
    command[0] = str(Path(sys.executable).parent / "tensorboard")  # the venv's, as after set-up
    with (tmp_path / "tensorboard.log").open("w") as out:
        viewer = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert viewer.poll() is None, (tmp_path / "tensorboard.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "TensorBoard never answered"
                time.sleep(0.5)
    finally:
        viewer.terminate()
        viewer.wait(timeout=30)
