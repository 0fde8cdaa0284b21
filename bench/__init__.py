"""Benchmark suites behind ``psn bench <suite>``: each prints a table and writes a PNG and a JSON into docs/.

One subpackage per suite, its entry point ``bench.<suite>.suite.main(argv)`` (registered in ``bench.cli``):
``neurons``, ``memory``, ``runtime``, ``serving``, ``transcript``, ``peers``; ``common`` is shared (options,
timing, tables, goals, JSON, plots), ``models`` makes the tiny models, ``raw`` times bare ONNX Runtime.
"""
