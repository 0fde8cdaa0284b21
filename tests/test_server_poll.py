"""A poll-mode ``psn serve`` (a real server, the shared launcher) picks up a new version folder on its next
scan while 64 streams and a classify load run: no error, the streams opened before keep version 1 to their
end, the streams opened after get version 2, every classify answer is one version's."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from psn_runtime import Runtime, RuntimeConfig
from server import launcher
from server.client import AsyncPSNClient
from tests.fixtures import F, exported_models
from tests.model_versions import derive_version

STREAM, CLASSIFY = "lif", "psn"  # tiny exported models (T=8, F=5): lif streams without bound
BEFORE, AFTER = 64, 16  # streams opened before and after version 2 arrives
STEPS = 40
POLL_S = 0.5

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _scrape(base: str) -> tuple[float, bool]:
    """(scans of the models dir done, whether version 2 of the stream model is READY), in one scrape."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    polls = re.search(r"^psn_model_polls_total (\S+)$", text, re.MULTILINE)
    ready = re.search(rf'^psn_model_ready{{model="{STREAM}",[^}}]*version="2"}} 1.0$', text, re.MULTILINE)
    return (float(polls.group(1)) if polls else 0.0), ready is not None


def _versions(base: str, name: str) -> tuple[str, dict[str, str]]:
    doc = httpx.get(f"{base}/v1/models/{name}", timeout=10).json()
    return doc["version"], {v["version"]: v["status"] for v in doc["versions"]}


async def _reference(models: Path, inputs: np.ndarray, versions: list[str], cx: np.ndarray) -> tuple:
    """Each stream's answers [n, STEPS, C] on its version, and each version's classify probabilities."""
    rt = Runtime(RuntimeConfig(models_dir=models, providers=["CPUExecutionProvider"]))
    await rt.start()
    out = []
    for x, version in zip(inputs, versions, strict=True):
        sid = await rt.open_stream(STREAM, version=version)
        out.append([(await rt.step(sid, row)).probabilities for row in x])
        rt.close_stream(sid)
    classify = {v: rt.classify(CLASSIFY, cx, version=v).probabilities for v in ("1", "2")}
    await rt.close()
    return np.array(out), classify


def test_poll_picks_up_a_new_version_under_load(tmp_path: Path) -> None:
    src = {name: exported_models() / name for name in (STREAM, CLASSIFY)}
    models, staged, reference = tmp_path / "models", tmp_path / "staged", tmp_path / "reference"
    for name, path in src.items():
        shutil.copytree(path, models / name / "1")
        derive_version(path, staged / name / "2", "2", shift=1)
        shutil.copytree(path, reference / name / "1")
        shutil.copytree(staged / name / "2", reference / name / "2")
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((BEFORE + AFTER, STEPS, F)).astype(np.float32)  # [streams, STEPS, F]
    cx = rng.standard_normal((1, 8, F)).astype(np.float32)  # one classify request [1, T, F]
    args = (
        "--providers",
        "CPUExecutionProvider",
        "--model-control",
        "poll",
        "--poll-interval-s",
        str(POLL_S),
    )

    with launcher.serve(*args, models_dir=models, log=tmp_path / "server.log") as server:
        base = server.base_url

        async def main() -> dict:
            client = AsyncPSNClient(base)
            halfway = asyncio.Event()
            answers: dict[int, list] = {}
            classified: list[list[float]] = []
            stop = asyncio.Event()

            async def stream(i: int) -> None:
                async with client.stream(STREAM) as s:
                    answers[i] = []
                    for t, row in enumerate(inputs[i]):
                        answers[i].append((await s.step(row)).probabilities)
                        if t == STEPS // 4 and i == BEFORE - 1:
                            halfway.set()
                        await asyncio.sleep(0.02)

            async def classify() -> None:
                while not stop.is_set():
                    classified.append((await client.classify(CLASSIFY, cx[0])).predictions[0].probabilities)
                    await asyncio.sleep(0.01)

            before = [asyncio.create_task(stream(i)) for i in range(BEFORE)]
            load = [asyncio.create_task(classify()) for _ in range(2)]
            await halfway.wait()  # every stream opened before is open and stepping
            polls_at_move, _ = await asyncio.to_thread(_scrape, base)
            for name in src:
                (staged / name / "2").rename(models / name / "2")  # one rename each: never a half folder
            while not (scrape := await asyncio.to_thread(_scrape, base))[1]:
                await asyncio.sleep(0.02)
            polls_at_ready = scrape[0]
            while (await asyncio.to_thread(_versions, base, CLASSIFY))[0] != "2":
                await asyncio.sleep(0.05)
            after = [asyncio.create_task(stream(i)) for i in range(BEFORE, BEFORE + AFTER)]
            results = await asyncio.gather(*before, *after, return_exceptions=True)
            stop.set()
            results += await asyncio.gather(*load, return_exceptions=True)
            await client.close()
            listed = await asyncio.to_thread(_versions, base, STREAM)
            errors = [r for r in results if r is not None]
            polls = (polls_at_move, polls_at_ready)
            return {
                "answers": answers,
                "classified": classified,
                "errors": errors,
                "polls": polls,
                "listed": listed,
            }

        got = asyncio.run(main())

    assert got["errors"] == []
    polls_at_move, polls_at_ready = got["polls"]
    # the scan under way when the folder arrived may miss it (it is counted once done); the next one loads it
    assert polls_at_ready <= polls_at_move + 1, got["polls"]
    assert got["listed"] == ("2", {"1": "ready", "2": "ready"})
    versions = ["1"] * BEFORE + ["2"] * AFTER
    want, classify = asyncio.run(_reference(reference, inputs, versions, cx))
    answers = np.array([got["answers"][i] for i in range(BEFORE + AFTER)])  # [streams, STEPS, C]
    np.testing.assert_allclose(answers, want, atol=1e-5)  # each stream on its version to the end
    by_version = {v: 0 for v in classify}
    for probabilities in got["classified"]:
        matches = [v for v, p in classify.items() if np.allclose(probabilities, p[0], atol=1e-5)]
        assert len(matches) == 1, probabilities
        by_version[matches[0]] += 1
    assert by_version["1"] > 0 and by_version["2"] > 0, by_version
