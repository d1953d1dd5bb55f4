"""The listening sockets of a process, bound before anything slow (the store's migrations, the
model) starts, and handed to uvicorn as they are.

A port that is taken (a previous process still exiting, a second copy, another service) is then a
clear error naming the address, at once, instead of a process that loads its model and keeps
running with no port.
"""

from __future__ import annotations

import socket

from ..errors import LayerDiffuseError

#: uvicorn's default; connections arriving before uvicorn accepts them wait here.
BACKLOG = 2048


class ListenError(LayerDiffuseError):
    """A listener cannot be bound to its address (in use, not an address of this host, not allowed)."""


def address(host: str, port: int) -> str:
    """``host:port`` as people write it (``[::1]:8080`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int, purpose: str) -> socket.socket:
    """A TCP socket listening on ``host:port``; raises :class:`ListenError` naming the address and
    ``purpose`` (which listener it is) when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restarted process can take its port back from connections in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Listening at once, not when uvicorn starts: a second process cannot bind it meanwhile.
        listener.bind((host, port))
        listener.listen(BACKLOG)
    except OSError as error:
        listener.close()
        reason = error.strerror or str(error)
        raise ListenError(f"cannot listen on {address(host, port)} ({purpose}): {reason}") from None
    return listener
