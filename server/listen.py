"""The server's listening sockets, bound before anything loads, and the report of what was bound.

``psn serve`` binds its port first: a taken port or an address this host does not have ends the command
with one line and exit status 1 in well under a second, before any model loads. It then reports what it
bound: one line per listener on stdout,

    psn-serve: listening on http://127.0.0.1:8000

and, with ``--port-file PATH``, the same as JSON written atomically (a reader never sees half a file):

    {"pid": 1234, "host": "127.0.0.1", "ports": {"http": 8000}, "urls": {"http": "http://127.0.0.1:8000"}}

``--port 0`` lets the kernel pick a free port; the report says which one, so nobody chooses a port before
the server has bound it (server/launcher.py reads the file). More listeners (another protocol on its own
port) add one entry to ``ports``/``urls`` and one line each.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

REPORT_PREFIX = "psn-serve: listening on "
BACKLOG = 2048  # uvicorn's default


def bind_socket(host: str, port: int, *, reuse_port: bool, reuse_addr: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port), SO_REUSEADDR (unless reuse_addr=False) and optionally
    SO_REUSEPORT (not listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if reuse_addr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_http(host: str, port: int, *, workers: int) -> socket.socket:
    """The HTTP port, ours from now on. One process: a listening socket that uvicorn serves (connections
    made while the models load wait in its backlog). Several workers: :func:`hold_port`, and each worker
    binds its own listening socket to the port with SO_REUSEPORT."""
    if workers > 1:
        return hold_port(host, port)
    sock = bind_socket(host, port, reuse_port=False)
    try:
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def hold_port(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT and never listening: it holds the port (and resolves port 0) for
    the server's life while the sockets that serve it (the workers', gRPC's) bind it with SO_REUSEPORT and
    listen. A plain bind first, so that a port someone else holds is refused even when it too is a
    SO_REUSEPORT group; the holder has no SO_REUSEADDR, so that a plain bind by anyone else is refused
    while it holds the port (Linux lets two SO_REUSEADDR sockets bind a port that nobody listens on)."""
    if port != 0:
        bind_socket(host, port, reuse_port=False).close()
    return bind_socket(host, port, reuse_port=True, reuse_addr=False)


def url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def describe(exc: OSError) -> str:
    """An OSError's reason in a few words ("address already in use"), without errno numbers."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


PORT_SETTINGS = {"http": "port", "grpc": "grpc_port"}  # the setting (and flag) of each protocol's port


class ListenError(OSError):
    """A port that cannot be bound; the message names the address, the reason and the flags."""


@dataclass
class Listeners:
    """The bound sockets by protocol (``"http"``, ``"grpc"``), all on ``host``."""

    host: str
    sockets: dict[str, socket.socket] = field(default_factory=dict)

    def add(self, name: str, port: int, bind: Callable[[str, int], socket.socket]) -> None:
        """``bind(host, port)`` as listener ``name``; ListenError (every socket closed) when it fails."""
        try:
            self.sockets[name] = bind(self.host, port)
        except OSError as exc:
            self.close()
            where = url(name, self.host, port)
            flags = "--host, --" + PORT_SETTINGS.get(name, "port").replace("_", "-")
            raise ListenError(f"cannot listen on {where}: {describe(exc)} ({flags})") from None

    def ports(self) -> dict[str, int]:
        return {name: sock.getsockname()[1] for name, sock in self.sockets.items()}

    def urls(self) -> dict[str, str]:
        return {name: url(name, self.host, port) for name, port in self.ports().items()}

    def report(self, port_file: Path | None = None, out: TextIO | None = None) -> None:
        """One line per listener on ``out`` (stdout), flushed; the JSON report into ``port_file``."""
        stream = out or sys.stdout
        for address in self.urls().values():
            print(REPORT_PREFIX + address, file=stream, flush=True)
        if port_file is not None:
            doc = {"pid": os.getpid(), "host": self.host, "ports": self.ports(), "urls": self.urls()}
            write_atomically(port_file, json.dumps(doc) + "\n")

    def bound_settings(self) -> dict[str, int]:
        """The port settings as bound (``{"port": 43211, "grpc_port": 43212}``: never 0)."""
        return {PORT_SETTINGS[name]: port for name, port in self.ports().items() if name in PORT_SETTINGS}

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
