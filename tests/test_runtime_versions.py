"""psn_runtime model versions: the numbered layout, the version policy, requests by version, and loading
and unloading while serving (poll, explicit) with streams that keep their version to the end."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from psn_runtime import ModelStatus, Runtime, RuntimeConfig
from psn_runtime.errors import (
    BadSnapshot,
    ModelControlDisabled,
    ModelLoadError,
    UnknownModel,
    UnknownStream,
    VersionUnavailable,
)
from psn_runtime.snapshot import SnapshotOrigin
from tests.fixtures import T, exported_models, make_runtime, run_full, running_means, sequences
from tests.model_versions import derive_version, relabeled

STREAM_KIND = "lif"  # streams without bound
CLASSIFY_KIND = "psn"


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, Path]:
    """Model directories: "lif/1" (the tiny lif), "lif/2" (classes rolled by 1), "lif/3" (by 2), and
    "psn/1", "psn/2" (rolled by 1). Copy them; do not modify them."""
    root = tmp_path_factory.mktemp("versions")
    out = {}
    for kind in (STREAM_KIND, CLASSIFY_KIND):
        out[f"{kind}/1"] = exported_models() / kind
        out[f"{kind}/2"] = derive_version(exported_models() / kind, root / kind / "2", "2", shift=1)
    out[f"{STREAM_KIND}/3"] = derive_version(
        exported_models() / STREAM_KIND, root / "lif" / "3", "3", shift=2
    )
    return out


SHIFT = {"1": 0, "2": 1, "3": 2}


def place(models: Path, versions: dict[str, Path], *keys: str) -> Path:
    """Copy version folders into models/NAME/V (moved in with one rename, as a deployment should)."""
    for key in keys:
        dst = models / key
        staging = models / f".staging-{key.replace('/', '-')}"
        shutil.copytree(versions[key], staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dst)
    return models


def config(models: Path, **values) -> RuntimeConfig:
    return RuntimeConfig(models_dir=models, providers=["CPUExecutionProvider"], **values)


def expected_means(x: np.ndarray, version: str) -> np.ndarray:
    """The running-mean logits [T, C] that version ``version`` of the stream model answers for x [T, F]."""
    _, step_logits = run_full(exported_models(), STREAM_KIND, x[None])
    return relabeled(running_means(step_logits)[0], SHIFT[version])


def expected_logits(x: np.ndarray, version: str) -> np.ndarray:
    """The classify logits [B, C] of version ``version`` of the classify model for x [B, T, F]."""
    logits, _ = run_full(exported_models(), CLASSIFY_KIND, x)
    return relabeled(logits, SHIFT[version])


async def wait_for(predicate, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def statuses(rt: Runtime, name: str) -> dict[str, ModelStatus]:
    return {v.version: v.status for v in rt.versions(name)}


def test_numbered_versions_load_and_the_highest_answers(tmp_path, versions):
    models = place(tmp_path / "models", versions, "lif/1", "lif/2", "psn/1", "psn/2")
    rt = make_runtime(models)
    info = rt.model(CLASSIFY_KIND)
    assert info.status is ModelStatus.READY and info.version == "2"
    assert [(v.version, v.status) for v in info.versions] == [("1", "ready"), ("2", "ready")]
    assert rt.model(CLASSIFY_KIND, "1").manifest.version == "1"
    x = sequences(3, seed=5)
    latest = rt.classify(CLASSIFY_KIND, x)
    first = rt.classify(CLASSIFY_KIND, x, version="1")
    assert (latest.version, first.version) == ("2", "1")
    np.testing.assert_allclose(first.logits, expected_logits(x, "1"), atol=1e-5)
    np.testing.assert_allclose(latest.logits, expected_logits(x, "2"), atol=1e-5)
    assert not np.array_equal(latest.label_index, first.label_index)
    with pytest.raises(VersionUnavailable, match="versions: 1 ready, 2 ready"):
        rt.classify(CLASSIFY_KIND, x, version="9")
    with pytest.raises(VersionUnavailable):
        rt.model(CLASSIFY_KIND, "9")
    with pytest.raises(UnknownModel):
        rt.classify("nope", x, version="1")


def test_folder_version_wins_and_the_name_must_match(tmp_path, versions):
    models = tmp_path / "models"
    shutil.copytree(versions["lif/1"], models / STREAM_KIND / "7")  # its manifest says version 1
    shutil.copytree(versions["psn/1"], models / "renamed" / "1")  # its manifest names "psn"
    (models / "notes").mkdir()  # neither a model directory nor numbered versions: ignored
    (models / STREAM_KIND / "07").mkdir()  # not a version number: ignored
    rt = make_runtime(models)
    lif = rt.model(STREAM_KIND)
    assert (lif.version, lif.status, lif.manifest.version) == ("7", ModelStatus.READY, "7")
    assert lif.warnings == ["the manifest says version '1'; served as version 7 (its folder)"]
    renamed = rt.model("renamed")
    assert renamed.status is ModelStatus.FAILED
    assert "manifest names model 'psn'" in renamed.error
    assert sorted(i.name for i in rt.models()) == ["lif", "renamed"]


def test_version_policy_latest_keeps_the_highest(tmp_path, versions):
    models = place(tmp_path / "models", versions, "lif/1", "lif/2", "lif/3")
    rt = make_runtime(models, version_policy="latest:2")
    assert statuses(rt, STREAM_KIND) == {"2": "ready", "3": "ready"}

    async def index():
        return await rt.repository_index()

    entries = {(e.version, e.state, e.reason) for e in asyncio.run(index()) if e.name == STREAM_KIND}
    assert entries == {
        ("1", "UNAVAILABLE", "left out by the version policy latest:2"),
        ("2", "READY", ""),
        ("3", "READY", ""),
    }
    for bad in ("latest:0", "latest", "newest:1", "latest:-1"):
        with pytest.raises(ValueError, match="version policy"):
            RuntimeConfig(models_dir=models, version_policy=bad)


def test_streams_keep_their_version_through_poll(tmp_path, versions):
    """A new version takes the new streams; a removed one serves its open streams to their end, then
    unloads and leaves the index."""
    models = place(tmp_path / "models", versions, "lif/1")
    x = sequences(2, seed=3)  # [2, T, F]: one sequence per stream

    async def main():
        rt = Runtime(config(models, model_control="poll", poll_interval_s=3600))
        await rt.start()
        old = await rt.open_stream(STREAM_KIND)
        answers_old = [await rt.step(old, x[0][t]) for t in range(3)]
        place(models, versions, "lif/2")
        loaded = await rt.poll()
        assert [(i.version, i.status) for i in loaded] == [("2", ModelStatus.READY)]
        new = await rt.open_stream(STREAM_KIND)
        assert (rt.stream_info(old).version, rt.stream_info(new).version) == ("1", "2")
        shutil.rmtree(models / STREAM_KIND / "1")
        assert await rt.poll() == []
        assert statuses(rt, STREAM_KIND) == {"1": "unloading", "2": "ready"}
        with pytest.raises(VersionUnavailable, match="takes no new work"):
            await rt.open_stream(STREAM_KIND, version="1")
        answers_old += [await rt.step(old, x[0][t]) for t in range(3, T)]
        answers_new = [await rt.step(new, x[1][t]) for t in range(T)]
        rt.close_stream(old)
        await wait_for(lambda: "1" not in statuses(rt, STREAM_KIND))
        index = [(e.version, e.state) for e in await rt.repository_index() if e.name == STREAM_KIND]
        await rt.close()
        return answers_old, answers_new, index

    answers_old, answers_new, index = asyncio.run(main())
    np.testing.assert_allclose([a.logits for a in answers_old], expected_means(x[0], "1"), atol=1e-5)
    np.testing.assert_allclose([a.logits for a in answers_new], expected_means(x[1], "2"), atol=1e-5)
    assert index == [("2", "READY")]


def test_unload_grace_closes_the_streams_left(tmp_path, versions):
    models = place(tmp_path / "models", versions, "lif/1")

    async def main():
        rt = Runtime(config(models, model_control="explicit", unload_grace_s=0.2))
        await rt.start()
        sid = await rt.open_stream(STREAM_KIND)
        await rt.step(sid, np.zeros(5, np.float32))
        unloaded = await rt.unload_model(STREAM_KIND)
        assert [(i.version, i.status) for i in unloaded] == [("1", ModelStatus.UNLOADING)]
        await wait_for(lambda: statuses(rt, STREAM_KIND) == {"1": "unavailable"})
        with pytest.raises(UnknownStream):
            await rt.step(sid, np.zeros(5, np.float32))
        index = [(e.version, e.state) for e in await rt.repository_index()]
        assert ("1", "UNAVAILABLE") in index
        loaded = await rt.load_model(STREAM_KIND)
        assert [(i.version, i.status) for i in loaded] == [("1", ModelStatus.READY)]
        sid = await rt.open_stream(STREAM_KIND)
        assert (await rt.step(sid, np.zeros(5, np.float32))).t == 0
        await rt.close()

    asyncio.run(main())


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_version_fails_with_its_reason_and_the_old_one_serves(tmp_path, versions):
    models = place(tmp_path / "models", versions, "psn/1")
    x = sequences(2, seed=9)

    async def main():
        rt = Runtime(config(models, model_control="poll", poll_interval_s=3600))
        await rt.start()
        place(models, versions, "psn/2")
        _corrupt(models / CLASSIFY_KIND / "2" / "full.onnx")
        [failed] = await rt.poll()
        assert failed.status is ModelStatus.FAILED and "sha256 mismatch for full.onnx" in failed.error
        assert (await rt.classify_async(CLASSIFY_KIND, x)).version == "1"
        index = {e.version: (e.state, e.reason) for e in await rt.repository_index()}
        assert index["1"] == ("READY", "")
        assert index["2"][0] == "UNAVAILABLE" and "sha256 mismatch" in index["2"][1]
        assert await rt.poll() == []  # unchanged on disk: not retried
        # a READY version whose files change into broken ones keeps serving its loaded sessions
        (models / CLASSIFY_KIND / "1" / "full.onnx").write_bytes(b"\x08\x07garbage")
        manifest = json.loads((models / CLASSIFY_KIND / "1" / "manifest.json").read_text())
        manifest["sha256"]["full.onnx"] = hashlib.sha256(b"\x08\x07garbage").hexdigest()
        (models / CLASSIFY_KIND / "1" / "manifest.json").write_text(json.dumps(manifest))
        [kept] = await rt.poll()
        assert kept.status is ModelStatus.READY and "onnxruntime cannot load full.onnx" in kept.error
        result = await rt.classify_async(CLASSIFY_KIND, x)
        # the good files come back for version 2: it loads and takes over
        shutil.rmtree(models / CLASSIFY_KIND / "2")
        place(models, versions, "psn/2")
        [fixed] = await rt.poll()
        assert fixed.status is ModelStatus.READY and fixed.error is None
        latest = await rt.classify_async(CLASSIFY_KIND, x)
        await rt.close()
        return result, latest

    result, latest = asyncio.run(main())
    assert result.version == "1" and latest.version == "2"
    np.testing.assert_allclose(result.logits, expected_logits(x, "1"), atol=1e-5)
    np.testing.assert_allclose(latest.logits, expected_logits(x, "2"), atol=1e-5)


def test_load_and_unload_need_explicit_model_control(tmp_path, versions):
    models = place(tmp_path / "models", versions, "psn/1")

    async def main():
        for mode in ("none", "poll"):
            rt = Runtime(config(models, model_control=mode, poll_interval_s=3600))
            await rt.start()
            with pytest.raises(ModelControlDisabled, match=f"model control is {mode}"):
                await rt.load_model(CLASSIFY_KIND)
            with pytest.raises(ModelControlDisabled):
                await rt.unload_model(CLASSIFY_KIND)
            await rt.close()
        rt = Runtime(config(models, model_control="explicit"))
        await rt.start()
        with pytest.raises(UnknownModel):
            await rt.load_model("nope")
        with pytest.raises(UnknownModel):
            await rt.unload_model("nope")
        place(models, versions, "psn/2")
        _corrupt(models / CLASSIFY_KIND / "2" / "full.onnx")
        with pytest.raises(ModelLoadError, match="version 2: sha256 mismatch"):
            await rt.load_model(CLASSIFY_KIND)
        assert statuses(rt, CLASSIFY_KIND) == {"1": "ready", "2": "failed"}
        await rt.close()

    asyncio.run(main())


def test_snapshots_resume_on_the_version_that_made_them(tmp_path, versions):
    models = place(tmp_path / "models", versions, "lif/1", "lif/2")
    x = sequences(1, seed=21)[0]  # [T, F]

    async def main():
        rt = Runtime(config(models))
        await rt.start()
        old = await rt.open_stream(STREAM_KIND, version="1")
        for t in range(4):
            await rt.step(old, x[t])
        spec = rt.stream_snapshot_spec(old)
        state = await rt.stream_state(old)
        assert (spec.model, spec.version) == (STREAM_KIND, "1")
        made_by = SnapshotOrigin(STREAM_KIND, "1", spec.graph_sha256)
        assert rt.snapshot_version(made_by) == "1"
        assert rt.snapshot_version(SnapshotOrigin(STREAM_KIND, None, spec.graph_sha256)) == "1"
        with pytest.raises(VersionUnavailable, match="another replica may have it"):
            rt.snapshot_version(SnapshotOrigin(STREAM_KIND, "5", spec.graph_sha256))
        with pytest.raises(BadSnapshot, match="other files"):
            rt.snapshot_version(SnapshotOrigin(STREAM_KIND, "2", spec.graph_sha256))
        resumed = await rt.open_stream(STREAM_KIND)  # on version 2, the highest
        assert rt.stream_info(resumed).version == "2"
        await rt.move_stream(resumed, "1")
        await rt.restore_stream(resumed, state)
        rest = [await rt.step(resumed, x[t]) for t in range(4, T)]
        assert rt.stream_info(resumed).version == "1" and rt.stream_count(STREAM_KIND, "2") == 0
        await rt.close()
        return rest

    rest = asyncio.run(main())
    np.testing.assert_allclose([a.logits for a in rest], expected_means(x, "1")[4:], atol=1e-5)


@pytest.mark.slow
@pytest.mark.slow
def test_changes_under_a_stream_and_classify_load(tmp_path, versions):
    """Versions come and go (poll, explicit load and unload) while streams step and classify calls run:
    no error, and every answer is the one of the version that gave it."""
    models = place(tmp_path / "models", versions, "lif/1", "psn/1")
    xs = sequences(6, seed=33)  # one sequence per stream
    cx = sequences(4, seed=34)  # classify inputs

    async def main():
        rt = Runtime(config(models, model_control="explicit", inline_max_rows=2))
        await rt.start()
        stop = asyncio.Event()
        streams: list[tuple[str, list]] = []
        classified: list = []

        async def stream_load(i: int) -> None:
            while not stop.is_set():
                sid = await rt.open_stream(STREAM_KIND)
                version = rt.stream_info(sid).version
                answers = [await rt.step(sid, xs[i][t]) for t in range(T)]
                rt.close_stream(sid)
                streams.append((version, answers, i))
                await asyncio.sleep(0)

        async def classify_load(batch: int) -> None:
            while not stop.is_set():
                classified.append(await rt.classify_async(CLASSIFY_KIND, cx[:batch]))
                await asyncio.sleep(0)

        load = [asyncio.create_task(stream_load(i)) for i in range(len(xs))]
        load += [asyncio.create_task(classify_load(b)) for b in (1, 4)]  # inline, and in a worker thread
        for step in ("lif/2", "psn/2", "lif/3"):
            await asyncio.sleep(0.05)
            place(models, versions, step)
            await rt.load_model(step.split("/")[0])
        await asyncio.sleep(0.05)
        shutil.rmtree(models / STREAM_KIND / "1")
        await rt.load_model(STREAM_KIND)  # version 1 is gone from disk: it unloads
        await asyncio.sleep(0.05)
        await rt.unload_model(CLASSIFY_KIND)  # both psn versions; classify fails from here on
        stop.set()
        results = await asyncio.gather(*load, return_exceptions=True)
        await rt.close()
        return streams, classified, results

    streams, classified, results = asyncio.run(main())
    classify_errors = [r for r in results[len(xs) :] if r is not None]
    assert [type(e).__name__ for e in classify_errors] in ([], ["ModelNotReady"], ["ModelNotReady"] * 2)
    assert all(r is None for r in results[: len(xs)]), results
    assert {v for v, _, _ in streams} >= {"1", "3"} and {c.version for c in classified} == {"1", "2"}
    for version, answers, i in streams:
        np.testing.assert_allclose([a.logits for a in answers], expected_means(xs[i], version), atol=1e-5)
    for result in classified:
        batch = len(result.labels)
        np.testing.assert_allclose(result.logits, expected_logits(cx[:batch], result.version), atol=1e-5)


def test_an_unloaded_version_is_freed_by_reference_counting(tmp_path, versions):
    """psn serve freezes start-up's objects (gc.freeze): an unloaded version's sessions must be freed without
    the cycle collector (the lone-step binding refers back to its streams)."""
    import gc
    import weakref

    models = place(tmp_path / "models", versions, "lif/1")

    async def main():
        rt = Runtime(config(models, model_control="explicit"))
        await rt.start()
        sid = await rt.open_stream(STREAM_KIND)
        await rt.step(sid, np.zeros(5, np.float32))  # the lone-step binding exists
        rt.close_stream(sid)
        session = weakref.ref(rt.serving(STREAM_KIND).step)  # the session the streams step with
        gc.collect()
        gc.freeze()
        try:
            await rt.unload_model(STREAM_KIND)
            await wait_for(lambda: statuses(rt, STREAM_KIND) == {"1": "unavailable"})
            return session() is None
        finally:
            gc.unfreeze()
            await rt.close()

    assert asyncio.run(main())
