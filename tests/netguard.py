"""No code path may reach the network: a guard that refuses every connection, datagram and name
look-up beyond this machine, in every process the tests start.

What stays allowed: loopback (127.0.0.0/8, ::1, "localhost"), and unix sockets.  Jupyter's
kernels, JupyterLab, the browser test and torchrun's gloo processes talk over them, and they reach
nothing outside.  Names are looked up only when they are "localhost", or the machine's own name where
``/etc/hosts`` answers it, so no look-up ever goes to a DNS server.
The guard raises :class:`NetworkRefused` before any packet is sent.

Where it is installed (``tests/conftest.py``):
- in the pytest process, by :func:`install`;
- in every Python process started from it (the CLI subprocesses, ``torchrun`` and its workers,
  JupyterLab, the notebook kernels of nbval, papermill and the browser test, the pool's workers):
  ``SITE`` holds a ``sitecustomize.py`` that installs it, and conftest puts ``SITE`` first on the
  ``PYTHONPATH`` those processes inherit;
- in Chromium (``tests/test_browser.py``), which is not Python: :func:`chromium_args` map every
  host name to "not found" and send every connection that is not to loopback to a loopback port
  that refuses it.
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

SITE = Path(__file__).resolve().with_name("netguard_site")  # its sitecustomize.py installs the guard
_INET = (socket.AF_INET, socket.AF_INET6)


class NetworkRefused(RuntimeError):
    """A connection or a name look-up beyond loopback: handfuse must never reach the network."""


def _loopback_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _own_hosts_entries(hosts: Path = Path("/etc/hosts"), nsswitch: Path = Path("/etc/nsswitch.conf")) -> list[list[str]]:
    """The ``/etc/hosts`` lines (address, names...) that name this machine, when the C library reads that
    file before asking DNS (``hosts: files ...`` in ``nsswitch.conf``): look-ups of these names and
    addresses are answered from the file, and no DNS server is asked."""
    try:
        order = [line.split()[1:] for line in nsswitch.read_text().splitlines() if line.startswith("hosts:")]
        lines = hosts.read_text().splitlines()
    except OSError:
        return []
    if not order or order[0][:1] != ["files"]:
        return []
    own = socket.gethostname().lower()
    entries = [line.split("#", 1)[0].lower().split() for line in lines]
    return [fields for fields in entries if len(fields) >= 2 and own in fields[1:]]


# torchrun looks up its own name (socket.getfqdn): allowed where /etc/hosts answers it
_OWN = _own_hosts_entries()
_LOOKUP_NAMES = {"localhost"} | {name for fields in _OWN for name in fields[1:]}
_REVERSE_ADDRESSES = {fields[0] for fields in _OWN}


def _local(host) -> bool:
    """Whether a connection to ``host`` stays on this machine: loopback, by address or as "localhost"."""
    if isinstance(host, bytes):
        host = host.decode()
    return host in (None, "", "localhost") or _loopback_address(str(host))


def _answered_here(host, reverse: bool = False) -> bool:
    """Whether a look-up of ``host`` (a name, or an address) needs nothing beyond this machine."""
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, ""):  # a passive (bind) look-up
        return True
    host = str(host).lower()
    return _loopback_address(host) or host in _LOOKUP_NAMES or (reverse and host in _REVERSE_ADDRESSES)


def _check_address(sock: socket.socket, address) -> None:
    if sock.family not in _INET:  # unix sockets (a path), netlink (pid, groups): never beyond this machine
        return
    if not _local(address[0]):
        raise NetworkRefused(f"a network connection to {address!r} was attempted; handfuse must work offline")


def _check_name(host, reverse: bool = False) -> None:
    if not _answered_here(host, reverse):
        what = "reverse look-up" if reverse else "name look-up"
        raise NetworkRefused(f"a {what} of {host!r} was attempted; handfuse must work offline")


# the unguarded socket functions, by name; the guard calls them only after its check passed (a test
# can swap in tripwires here, to show that nothing reaches them without sending anything)
REAL: dict = {}
_METHODS = ("connect", "connect_ex", "sendto", "sendmsg")
_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")


def install() -> None:
    """Patch socket connections, datagrams and look-ups (idempotent)."""
    if getattr(socket.socket.connect, "_handfuse_guard", False):
        return
    REAL.update({name: getattr(socket.socket, name) for name in _METHODS})
    REAL.update({name: getattr(socket, name) for name in _LOOKUPS})

    def connect(self, address):
        _check_address(self, address)
        return REAL["connect"](self, address)

    def connect_ex(self, address):
        _check_address(self, address)
        return REAL["connect_ex"](self, address)

    def sendto(self, data, *args):  # sendto(data, address) or sendto(data, flags, address)
        _check_address(self, args[-1])
        return REAL["sendto"](self, data, *args)

    def sendmsg(self, buffers, ancdata=(), flags=0, address=None):
        if address is None:  # a connected socket: its connect() was checked
            return REAL["sendmsg"](self, buffers, ancdata, flags)
        _check_address(self, address)
        return REAL["sendmsg"](self, buffers, ancdata, flags, address)

    def getaddrinfo(host, *args, **kwargs):
        _check_name(host)
        return REAL["getaddrinfo"](host, *args, **kwargs)

    def gethostbyname(host):
        _check_name(host)
        return REAL["gethostbyname"](host)

    def gethostbyname_ex(host):
        _check_name(host)
        return REAL["gethostbyname_ex"](host)

    def gethostbyaddr(host):
        _check_name(host, reverse=True)
        return REAL["gethostbyaddr"](host)

    def getnameinfo(sockaddr, flags):
        _check_name(sockaddr[0], reverse=True)
        return REAL["getnameinfo"](sockaddr, flags)

    connect._handfuse_guard = True
    for fn in (connect, connect_ex, sendto, sendmsg):
        setattr(socket.socket, fn.__name__, fn)
    for fn in (getaddrinfo, gethostbyname, gethostbyname_ex, gethostbyaddr, getnameinfo):
        setattr(socket, fn.__name__, fn)


def chromium_args(refusing_port: int) -> list[str]:
    """Chromium flags that keep it on this machine: every host name resolves to "not found" (no DNS
    query is made), and every connection that is not to loopback goes through a "proxy" at
    ``127.0.0.1:refusing_port``, a port that refuses connections (bound, never listening).  Chromium
    never sends loopback through a proxy, so JupyterLab on 127.0.0.1 is reached directly."""
    return ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
            f"--proxy-server=http://127.0.0.1:{refusing_port}", "--disable-background-networking",
            "--disable-component-update", "--disable-domain-reliability", "--no-pings", "--dns-prefetch-disable"]
