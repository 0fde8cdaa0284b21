"""Benchmark suites behind ``psn bench <suite>``: each prints a table and writes a PNG and a JSON into docs/.

Suites: ``neurons`` (simulation speed of LIF vs the PSN family, the paper's Fig. 3), ``memory`` (training
memory with IF neurons vs PSN, the paper's Table 4); ``runtime`` and ``serving`` are registered in
``bench.cli`` and live in their own modules.
"""
