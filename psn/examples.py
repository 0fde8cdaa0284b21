"""``psn examples``: write ``examples.json`` beside each bundled model: a few real TEST examples of the
data set the model was trained on (smnist, mnist1d, or mnist2d: the smnist digits as static images
repeated over the model's T steps): the first test example of each class, in the test split's order, with
their labels. The server answers them at ``GET /v1/models/{name}/examples/{i}`` and the demo page plays
them. The files are reproducible: the data sets are built offline with fixed seeds (psn/data.py).

File format (``inputs`` is [T, *per-step shape], numbers in float32's shortest decimal form, so that
parsing them as float32 gives back the data set's exact values)::

    {"dataset": "smnist", "split": "test", "command": "psn examples ...",
     "examples": [{"index": 17, "label": "0", "inputs": [[...], ...]}, ...]}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from psn.data import DatasetName, load_dataset

EXAMPLES_FILE = "examples.json"
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


def pick(y_test: np.ndarray, classes: int) -> list[int]:
    """Indices into the test split: the first example of each class, classes in order."""
    return [int(np.flatnonzero(y_test == c)[0]) for c in range(classes) if (y_test == c).any()]


def _shortest(values: np.ndarray) -> list:
    """float32 [T, *shape] -> nested lists of floats written in float32's shortest round-trip form."""
    flat = [0.0 if v == 0 else float(np.format_float_positional(v, unique=True)) for v in values.ravel()]
    return np.asarray(flat, dtype=np.float64).reshape(values.shape).tolist()


MNIST2D = "mnist2d"  # psn train-zoo: the smnist digits as static images [1, 28, 28], repeated over T


def _test_split(dataset: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(x_test [M, T, F] or [M, 1, 28, 28] for mnist2d, y_test [M], labels)."""
    if dataset == MNIST2D:
        from psn.data import load_mnist_images

        images = load_mnist_images()
        return images.x_test, images.y_test, images.labels
    data = load_dataset(DatasetName(dataset))
    return data.x_test, data.y_test, data.labels


def examples_doc(dataset: str, T: int, command: str) -> dict:
    """The first test example of each class; for mnist2d each image repeated over the model's T steps."""
    x_test, y_test, labels = _test_split(dataset)
    inputs = (lambda x: np.repeat(x[None], T, axis=0)) if dataset == MNIST2D else (lambda x: x)
    return {
        "dataset": dataset,
        "split": "test",
        "command": command,
        "examples": [
            {
                "index": i,
                "label": labels[int(y_test[i])],
                "inputs": _shortest(inputs(x_test[i]).astype(np.float32)),  # [T, *input_shape]
            }
            for i in pick(y_test, len(labels))
        ],
    }


def write_examples(models_dir: Path, command: str) -> list[Path]:
    """An examples.json in every model directory whose manifest names a bundled data set."""
    known = {d.value for d in DatasetName} | {MNIST2D}
    written = []
    docs: dict[tuple[str, int], str] = {}
    for manifest_path in sorted(Path(models_dir).glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("dataset") not in known:
            continue
        key = (manifest["dataset"], int(manifest["T"]) if manifest["dataset"] == MNIST2D else 0)
        if key not in docs:
            docs[key] = json.dumps(examples_doc(key[0], key[1], command), separators=(",", ":")) + "\n"
        path = manifest_path.parent / EXAMPLES_FILE
        path.write_text(docs[key])
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="psn examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="folder of model dirs")
    args = parser.parse_args(argv)
    if not args.models_dir.is_dir():
        parser.error(f"--models-dir {str(args.models_dir)!r} is not a directory")
    for path in write_examples(args.models_dir, "psn examples --models-dir models"):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
