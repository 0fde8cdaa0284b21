"""``psn bench memory``: training memory with IF neurons vs PSN (paper Table 4)."""
