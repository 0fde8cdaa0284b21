"""A SpikingJelly network on event-camera-like frames [2, 32, 32], T = 8: sliding PSN + LIF, so it streams.

``python docs/examples/sj_quadrants.py`` trains it for a few steps on synthetic events (denser in one quadrant
of the frame; the class is that quadrant) and writes ``sj_quadrants.safetensors`` (the weights) and
``sj_example.json`` (one test sequence, ``{"inputs": [T, 2, 32, 32]}``) in the current directory.
``psn export --module docs/examples/sj_quadrants.py:build ...`` builds the same network and loads the weights.
"""

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from spikingjelly.activation_based import functional, layer, neuron, surrogate

T = 8
LABELS = ["top-left", "top-right", "bottom-left", "bottom-right"]


def build() -> torch.nn.Module:
    """x [T, N, 2, 32, 32] -> per-step logits [T, N, 4] (SpikingJelly's multi-step mode)."""
    net = torch.nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, bias=False),
        layer.BatchNorm2d(8),
        neuron.SlidingPSN(k=2),
        layer.MaxPool2d(2),  # [8, 16, 16]
        layer.Conv2d(8, 16, 3, padding=1, bias=False),
        layer.BatchNorm2d(16),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(4),  # [16, 4, 4]
        layer.Flatten(),
        layer.Linear(16 * 4 * 4, len(LABELS)),
    )
    functional.set_step_mode(net, "m")
    return net


def events(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences x [T, n, 2, 32, 32] of random events, denser in the quadrant y [n] names."""
    y = torch.randint(0, len(LABELS), (n,), generator=gen)
    p = torch.full((n, 2, 32, 32), 0.05)
    for i, c in enumerate(y.tolist()):
        row, col = divmod(c, 2)
        p[i, :, 16 * row : 16 * row + 16, 16 * col : 16 * col + 16] = 0.25
    return torch.bernoulli(p.expand(T, *p.shape).contiguous(), generator=gen), y


if __name__ == "__main__":
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = build()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(40):  # a few steps: the task is easy
        x, y = events(32, gen)
        loss = F.cross_entropy(net(x).mean(0), y)  # decision = mean over T of the per-step logits
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(net)  # LIFNode keeps its membrane between calls: clear it
    net.eval()
    with torch.no_grad():
        x, y = events(200, gen)
        accuracy = (net(x).mean(0).argmax(1) == y).float().mean().item()
        functional.reset_net(net)
    save_file(net.state_dict(), "sj_quadrants.safetensors")
    with open("sj_example.json", "w") as f:
        json.dump({"inputs": x[:, 0].tolist()}, f)  # the first test sequence [T, 2, 32, 32]
    print(f"accuracy {accuracy:.3f} on 200 new sequences; first one is {LABELS[y[0]]}")
