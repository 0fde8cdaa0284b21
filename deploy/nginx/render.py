"""Render deploy/nginx/psn-serve.conf for a list of replicas.

    python3 deploy/nginx/render.py 10.1.0.2:8000 10.1.0.6:8000 > /etc/nginx/conf.d/psn-serve.conf
    python3 deploy/nginx/render.py --listen 127.0.0.1:8080 --prefix /tmp/psn-nginx A:8000 B:8000 \
        > /tmp/psn-nginx/nginx.conf && nginx -p /tmp/psn-nginx -c nginx.conf
    python3 deploy/nginx/render.py A:8000 B:8000 --grpc A:8001 B:8001 --grpc-listen 8081 > ...

The gRPC part (an upstream of the replicas' --grpc-port and an HTTP/2 server with grpc_pass) is rendered
only when --grpc lists the replicas' gRPC addresses.

With --prefix the output is a whole nginx.conf (pid, logs and temp files under PREFIX, no root needed
but for ports below 1024) instead of a conf.d site file. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

SITE = Path(__file__).with_name("psn-serve.conf")
_SERVER_LINE = re.compile(r"^(\s*)server \S+:\d+ (max_fails=.*)$", re.MULTILINE)
_LISTEN_LINE = re.compile(r"^(\s*)listen \S+;$", re.MULTILINE)
_HTTP2_LISTEN_LINE = re.compile(r"^(\s*)listen \S+ http2;$", re.MULTILINE)
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$")
_GRPC_PART = re.compile(r"^# BEGIN grpc\n.*^# END grpc\n", re.MULTILINE | re.DOTALL)


def _check(replicas: list[str], what: str) -> None:
    if not replicas:
        raise ValueError(f"at least one {what} (host:port) is needed")
    for address in replicas:
        if not _ADDRESS.match(address):
            raise ValueError(f"{what} {address!r} is not host:port")


def _upstream(text: str, name: str, replicas: list[str]) -> str:
    """``text`` with the server lines of ``upstream NAME { ... }`` replaced by one per replica."""
    start = text.index(f"upstream {name} {{")
    end = text.index("\n}", start)
    lines = list(_SERVER_LINE.finditer(text, start, end))
    if not lines:
        raise ValueError(f"{SITE}: upstream {name} has no server lines")
    indent, options = lines[0].group(1), lines[0].group(2)
    servers = "\n".join(f"{indent}server {address} {options}" for address in replicas)
    return text[: lines[0].start()] + servers + text[lines[-1].end() :]


def site(
    replicas: list[str],
    listen: str = "8080",
    extra: str = "",
    grpc: list[str] | None = None,
    grpc_listen: str = "8081",
) -> str:
    """The conf.d site file with one upstream ``server`` line per replica (``host:port``); ``extra``
    directives go into the HTTP server block, after its listen line. ``grpc``: the replicas' gRPC
    addresses (the gRPC upstream and its HTTP/2 server on ``grpc_listen``); None leaves gRPC out."""
    _check(replicas, "replica")
    text = _upstream(SITE.read_text(), "psn_serve", replicas)
    text = _LISTEN_LINE.sub(
        lambda m: f"{m.group(1)}listen {listen};{extra and chr(10) + extra}", text, count=1
    )
    if grpc is None:
        return _GRPC_PART.sub("", text)
    _check(grpc, "gRPC replica")
    text = _upstream(text, "psn_serve_grpc", grpc)
    return _HTTP2_LISTEN_LINE.sub(lambda m: f"{m.group(1)}listen {grpc_listen} http2;", text, count=1)


def standalone(
    replicas: list[str],
    prefix: Path,
    listen: str = "127.0.0.1:8080",
    extra: str = "",
    grpc: list[str] | None = None,
    grpc_listen: str = "127.0.0.1:8081",
) -> str:
    """A whole nginx.conf for ``nginx -p PREFIX -c nginx.conf``: every file nginx writes is under PREFIX."""
    p = Path(prefix)
    return f"""# rendered by deploy/nginx/render.py
worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
{site(replicas, listen, extra, grpc, grpc_listen)}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("replicas", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--listen", default=None, help="nginx listen address (default 8080)")
    parser.add_argument("--prefix", type=Path, default=None, help="render a whole nginx.conf for this prefix")
    parser.add_argument("--grpc", nargs="+", metavar="HOST:PORT", help="the replicas' gRPC addresses")
    parser.add_argument("--grpc-listen", default=None, help="nginx's gRPC listen address (default 8081)")
    args = parser.parse_args(argv)
    try:
        if args.prefix is None:
            text = site(args.replicas, args.listen or "8080", "", args.grpc, args.grpc_listen or "8081")
        else:
            text = standalone(
                args.replicas,
                args.prefix,
                args.listen or "127.0.0.1:8080",
                "",
                args.grpc,
                args.grpc_listen or "127.0.0.1:8081",
            )
    except ValueError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
