"""No code path may open a network connection: a guard that refuses every connection and name
look-up beyond this machine, in the test process and in every notebook kernel the tests start.

Loopback (127.0.0.0/8, ::1, "localhost") and unix sockets stay allowed: Jupyter's kernels and the
browser test talk over them, and they reach nothing outside.  The guard raises before any packet
is sent.  ``conftest`` installs it in the pytest process and, through an IPython startup file in
a private ``IPYTHONDIR``, in each kernel that nbval or papermill starts from the tests.
"""
from __future__ import annotations

import ipaddress
import socket


class NetworkRefused(RuntimeError):
    """A connection or a name look-up beyond loopback: handfuse must never reach the network."""


def _local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address) -> None:
    if isinstance(address, (str, bytes)):  # a unix socket path
        return
    if not _local(address[0]):
        raise NetworkRefused(f"a network connection to {address!r} was attempted; handfuse must work offline")


def install() -> None:
    """Patch socket connections and look-ups (idempotent)."""
    if getattr(socket.socket.connect, "_handfuse_guard", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        _check(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _check(address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _local(host):
            raise NetworkRefused(f"a name look-up of {host!r} was attempted; handfuse must work offline")
        return getaddrinfo(host, *args, **kwargs)

    guarded_connect._handfuse_guard = True
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = guarded_connect, guarded_connect_ex, guarded_getaddrinfo


STARTUP = """# written by tests/conftest.py: refuse the network in every kernel the tests start
import sys
sys.path.insert(0, {tests!r})
import netguard
netguard.install()
"""
