"""PyTorch side of psn-serve: PSN-family neurons, sequence classifiers, data sets and training.

Importing the package itself does not import torch, so that the ``psn`` command line (whose ``serve``
subcommand needs no torch) starts on a serving-only install. Import ``psn.neurons``, ``psn.network``...
for the PyTorch parts.
"""
