"""``psn bench serving`` (``suite.main``): the service under load beside its floor. ``procs`` starts the
servers (server/launcher.py), ``runs`` holds the parts, ``wrk``/``ws``/``openloop``/``latency`` make the
load, ``report``/``plots`` the output; ``echo_app`` is the floor, ``gctrace``/``profile`` look inside."""
