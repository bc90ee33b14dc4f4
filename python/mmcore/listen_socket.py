"""Binding the server's port, kept free of heavy imports so ``mmcore serve`` can claim its port
(and report "address already in use") before torch, transformers or the model load."""

from __future__ import annotations

import socket


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the server's port now (before the model loads), so a port in use fails at once.

    Raises:
        OSError: one line naming the address and the reason (e.g. "address already in use").
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
