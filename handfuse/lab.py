"""Start JupyterLab on loopback with a random token, for a person or a browser test.

:func:`running_lab` is a context manager: it starts ``jupyter lab`` bound to
127.0.0.1 on a free port, with a fresh ``secrets.token_hex`` token, no browser,
``--LabApp.expose_app_in_browser=True`` (so a test can drive ``window.jupyterapp``)
and a given root folder; it waits until the server answers, yields ``(url, token)``
and on exit shuts the server and its kernels down::

    from handfuse.lab import running_lab
    with running_lab("notebooks") as (url, token):
        print(f"{url}/lab?token={token}")
        input("press Enter to stop")

Loopback and a token are a security requirement: anyone who reaches the port and
knows the token can run code.  The server's settings, workspaces and runtime files
(the token is written there) live in a private temporary folder, removed on exit,
so a run neither reads nor leaves behind a user's JupyterLab state.  The server
inherits this process's environment (``HANDFUSE_PRESET``, ``HANDFUSE_FIGURES``,
``HANDFUSE_RUNS`` reach the kernels).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on now (the kernel picks it; a race is caught at start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lab_command(root: Path, port: int, token: str, state: Path) -> list[str]:
    """The ``jupyter lab`` command line: loopback, this port only, this token, no browser, the app
    exposed as ``window.jupyterapp``, settings and workspaces under ``state``."""
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={state / 'settings'}",
           f"--LabApp.workspaces_dir={state / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd


def write_settings(folder: Path, settings: dict[str, dict]) -> None:
    """JupyterLab user settings: ``settings["@jupyterlab/notebook-extension:tracker"] = {...}`` becomes
    ``folder/@jupyterlab/notebook-extension/tracker.jupyterlab-settings``."""
    for plugin, values in settings.items():
        package, _, name = plugin.rpartition(":")
        path = folder / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def get(url: str, timeout: float = 5.0) -> int:
    """The HTTP status of a GET (an error status is returned, not raised)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_until_up(url: str, token: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``/api/status`` with the token until it answers 200; raise if the server exits or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode} before answering")
        try:
            if get(f"{url}/api/status?token={token}", timeout=2.0) == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.25)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (Linux ``/proc``; empty elsewhere): the kernels of a server."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(process: subprocess.Popen, url: str, token: str, timeout: float = 20.0) -> None:
    """Shut the server down: ``POST /api/shutdown`` (which stops its kernels), SIGTERM if it is still
    up after ``timeout``, SIGKILL after as long again; then end any of its kernels still alive, by pid."""
    kernels = children(process.pid)
    try:
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=5.0).close()
    except OSError:  # already gone, or not answering: the signals below do it
        pass
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            process.send_signal(sig)
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in kernels:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def running_lab(root: str | Path, settings: dict[str, dict] | None = None, timeout: float = 60.0,
                log: Path | None = None) -> Iterator[tuple[str, str]]:
    """JupyterLab serving ``root`` on 127.0.0.1 with a fresh token: yields ``(url, token)``, shuts it
    and its kernels down on exit.  ``settings`` are JupyterLab user settings by plugin id; the
    server's output goes to ``log`` (default: discarded)."""
    state = Path(tempfile.mkdtemp(prefix="handfuse-lab-"))
    write_settings(state / "settings", settings or {})
    token, port = secrets.token_hex(24), free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    out = open(log, "ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(lab_command(Path(root).resolve(), port, token, state), env=env, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(url, token, process, timeout)
        yield url, token
    finally:
        stop(process, url, token)
        if log:
            out.close()
        shutil.rmtree(state, ignore_errors=True)


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (Linux ``/proc/net/tcp{,6}``), as
    dotted IPv4 or hex IPv6: where a server on that port can be reached from."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if width == 8 else address)
    return found
