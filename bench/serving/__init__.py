"""``psn bench serving``: the HTTP/WebSocket service under load (``suite.main``), beside the echo ceiling.

Modules: ``suite`` (options, plan, main), ``procs`` (servers started pinned), ``runs`` (the parts: classify,
streams, first output, profiles), ``wrk`` (classify load), ``ws`` (stream load), ``latency``, ``models``,
``report``/``output``/``plots`` (tables, JSON, PNG), ``profile`` (py-spy), ``echo_app`` (the ceiling).
"""
