"""No network: the guard refuses connections beyond loopback, in this process and in kernels."""
from __future__ import annotations

import socket

import pytest

from netguard import NetworkRefused


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
