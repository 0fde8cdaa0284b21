"""``psn examples``: write ``examples.json`` beside each bundled model: a few real TEST examples of the
data set the model was trained on (the first test example of each class, in the test split's order), with
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


def examples_doc(dataset: DatasetName, command: str) -> dict:
    data = load_dataset(dataset)
    chosen = pick(data.y_test, len(data.labels))
    return {
        "dataset": str(dataset),
        "split": "test",
        "command": command,
        "examples": [
            {
                "index": i,
                "label": data.labels[int(data.y_test[i])],
                "inputs": _shortest(data.x_test[i].astype(np.float32)),  # [T, F]
            }
            for i in chosen
        ],
    }


def write_examples(models_dir: Path, command: str) -> list[Path]:
    """An examples.json in every model directory whose manifest names a bundled data set."""
    written = []
    docs: dict[DatasetName, str] = {}
    for manifest_path in sorted(Path(models_dir).glob("*/manifest.json")):
        dataset_name = json.loads(manifest_path.read_text()).get("dataset")
        if dataset_name not in {d.value for d in DatasetName}:
            continue
        dataset = DatasetName(dataset_name)
        if dataset not in docs:
            docs[dataset] = json.dumps(examples_doc(dataset, command), separators=(",", ":")) + "\n"
        path = manifest_path.parent / EXAMPLES_FILE
        path.write_text(docs[dataset])
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
