"""``psn bench neurons``: simulation speed of LIF vs the PSN family (paper Fig. 3); ``kernels`` holds the
plain-PyTorch reference forms, ``report`` the tables and plots."""
