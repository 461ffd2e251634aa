"""No network: the guard refuses connections and name look-ups beyond loopback, in this process and
in every process the tests start: kernels, Python subprocesses, torchrun and its workers.  (Chromium
is checked in tests/test_browser.py, JupyterLab's own process there too.)"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import netguard
from netguard import NetworkRefused

TORCHRUN = Path(sys.executable).with_name("torchrun")


def test_the_test_process_cannot_reach_the_network():
    with pytest.raises(NetworkRefused, match="192.0.2.1"):  # TEST-NET-1: refused before any packet
        socket.create_connection(("192.0.2.1", 9), timeout=1)
    with pytest.raises(NetworkRefused, match="look-up"):
        socket.getaddrinfo("example.org", 443)
    server = socket.socket()  # loopback stays open: kernels and the browser test use it
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
        pass
    server.close()


def test_a_kernel_started_by_the_tests_cannot_reach_the_network():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        code = ("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 9), timeout=1)\n"
                "    print('CONNECTED')\nexcept Exception as e:\n    print(type(e).__name__)")
        outputs = []
        kc.execute_interactive(code, timeout=60, output_hook=lambda m: outputs.append(m["content"].get("text", "")))
        assert "NetworkRefused" in "".join(outputs), outputs
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# A child process's attempts, each of which must be refused before anything is sent.  The guard's
# unguarded functions (netguard.REAL) are replaced by tripwires first, so that even a guard that let
# an attempt through would send nothing: the tripwire records it and raises.
CHILD = r'''
import json, socket, sys, urllib.request
if not getattr(socket.socket.connect, "_handfuse_guard", False):
    sys.stdout.write(json.dumps({"guarded": False}) + "\n")  # one write: side-by-side workers share stdout
    sys.exit()
import netguard
server = socket.socket()  # loopback stays open, through the real functions
server.bind(("127.0.0.1", 0))
server.listen(1)
with socket.create_connection(server.getsockname(), timeout=5):
    pass
reached = []
def tripwire(name):
    def wire(*args, **kwargs):
        reached.append(name)
        raise ConnectionError(f"tripwire {name}")
    return wire
for name in list(netguard.REAL):
    netguard.REAL[name] = tripwire(name)
attempts = {
    "tcp connect": lambda: socket.socket().connect(("10.255.255.1", 9)),
    "tcp connect_ex": lambda: socket.socket().connect_ex(("192.0.2.1", 9)),
    "ipv6 connect": lambda: socket.socket(socket.AF_INET6).connect(("2001:db8::1", 9, 0, 0)),
    "udp sendto": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.255.255.1", 9)),
    "create_connection": lambda: socket.create_connection(("10.255.255.1", 9), timeout=1),
    "getaddrinfo": lambda: socket.getaddrinfo("example.org", 443),
    "gethostbyname": lambda: socket.gethostbyname("example.org"),
    "gethostbyaddr": lambda: socket.gethostbyaddr("192.0.2.1"),
    "urlopen": lambda: urllib.request.urlopen("http://example.org/", timeout=1),
}
refused = {}
for what, attempt in attempts.items():
    try:
        attempt()
        refused[what] = "not refused"
    except Exception as e:
        refused[what] = type(e).__name__
sys.stdout.write(json.dumps({"guarded": True, "refused": refused, "reached": reached}) + "\n")
'''


def _child_report(stdout: str) -> dict:
    return _reports(stdout)[-1]


def _reports(stdout: str) -> list[dict]:
    """Every JSON object in ``stdout``, in order, wherever the lines break: processes writing side by
    side (unbuffered, as the Makefile runs them) can put two reports on one line."""
    decoder, found, at = json.JSONDecoder(), [], stdout.find("{")
    while at >= 0:
        try:
            report, end = decoder.raw_decode(stdout, at)
        except json.JSONDecodeError:  # a brace in other output: look further on
            at = stdout.find("{", at + 1)
            continue
        found.append(report)
        at = stdout.find("{", end)
    return found


def _assert_refused(report: dict) -> None:
    assert report["guarded"], "the child process started without the network guard"
    assert report["reached"] == [], f"attempts got past the guard: {report['reached']}"
    assert set(report["refused"].values()) == {"NetworkRefused"}, report["refused"]


def test_a_python_process_started_by_the_tests_cannot_reach_the_network(tmp_path):
    """What the CLI subprocesses, JupyterLab, its kernels and the pool's workers are: a Python process
    started with this process's environment."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_refused(_child_report(done.stdout))


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is installed with torch")
def test_torchrun_and_its_workers_cannot_reach_the_network(tmp_path):
    """torchrun's agent starts under the guard (it looks up its own name, which /etc/hosts answers) and
    so does each worker it starts."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(29400 + os.getpid() % 500),
                           str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reports = _reports(done.stdout)
    assert len(reports) == 2, done.stdout  # one per worker
    for report in reports:
        _assert_refused(report)


def _guarded(_job) -> bool:
    return bool(getattr(socket.socket.connect, "_handfuse_guard", False)) and os.environ["PYTHONPATH"].startswith(
        str(netguard.SITE))


def test_the_pool_workers_start_guarded(monkeypatch):
    """handfuse.pool's workers come from a forkserver, a Python process started with this environment."""
    from handfuse import pool

    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    pool.shutdown()  # workers started now, under the guard's PYTHONPATH
    try:
        assert pool.map_jobs(_guarded, [0, 1], progress=False) == [True, True]
    finally:
        pool.shutdown()
