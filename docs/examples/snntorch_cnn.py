"""The convolutional network of snnTorch's tutorials on MNIST-sized frames [1, 28, 28]: Conv2d + MaxPool
+ Leaky, twice, then Linear + Leaky, in snnTorch's single-step convention (``init_hidden=True``; the
caller's loop runs it once per step and reads the last layer's (spk, mem)).

``psn export --module docs/examples/snntorch_cnn.py:build --weights W --input-shape 8,1,28,28 --name
cnn --out models/cnn --readout mem`` exports it (W: its state_dict as .safetensors or .pt).
"""

import snntorch as snn
import torch
from torch import nn

LABELS = [str(d) for d in range(10)]


def build() -> nn.Sequential:
    """x_t [N, 1, 28, 28] -> (spk, mem) [N, 10], one step; snntorch.utils.reset(net) between sequences."""
    beta = 0.9
    return nn.Sequential(
        nn.Conv2d(1, 4, 5),
        nn.MaxPool2d(2),  # [4, 12, 12]
        snn.Leaky(beta=beta, threshold=0.5, init_hidden=True),
        nn.Conv2d(4, 8, 5),
        nn.MaxPool2d(2),  # [8, 4, 4]
        snn.Leaky(beta=torch.full((8, 1, 1), beta), threshold=0.5, init_hidden=True, learn_beta=True),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, len(LABELS)),
        snn.Leaky(beta=beta, init_hidden=True, output=True),
    )
