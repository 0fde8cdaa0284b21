"""Render deploy/nginx/psn-serve.conf for a list of replicas.

    python3 deploy/nginx/render.py 10.1.0.2:8000 10.1.0.6:8000 > /etc/nginx/conf.d/psn-serve.conf
    python3 deploy/nginx/render.py --listen 127.0.0.1:8080 --prefix /tmp/psn-nginx A:8000 B:8000 \
        > /tmp/psn-nginx/nginx.conf && nginx -p /tmp/psn-nginx -c nginx.conf

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
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:\[\]-]+:\d{1,5}$")


def site(replicas: list[str], listen: str = "8080", extra: str = "") -> str:
    """The conf.d site file with one upstream ``server`` line per replica (``host:port``); ``extra``
    directives go into the server block, after its listen line."""
    if not replicas:
        raise ValueError("at least one replica (host:port) is needed")
    for address in replicas:
        if not _ADDRESS.match(address):
            raise ValueError(f"replica {address!r} is not host:port")
    text = SITE.read_text()
    lines = list(_SERVER_LINE.finditer(text))
    if not lines:
        raise ValueError(f"{SITE} has no upstream server lines")
    indent, options = lines[0].group(1), lines[0].group(2)
    servers = "\n".join(f"{indent}server {address} {options}" for address in replicas)
    text = text[: lines[0].start()] + servers + text[lines[-1].end() :]
    return _LISTEN_LINE.sub(
        lambda m: f"{m.group(1)}listen {listen};{extra and chr(10) + extra}", text, count=1
    )


def standalone(replicas: list[str], prefix: Path, listen: str = "127.0.0.1:8080", extra: str = "") -> str:
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
{site(replicas, listen, extra)}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("replicas", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--listen", default=None, help="nginx listen address (default 8080)")
    parser.add_argument("--prefix", type=Path, default=None, help="render a whole nginx.conf for this prefix")
    args = parser.parse_args(argv)
    try:
        if args.prefix is None:
            text = site(args.replicas, args.listen or "8080")
        else:
            text = standalone(args.replicas, args.prefix, args.listen or "127.0.0.1:8080")
    except ValueError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
