"""The serving process freezes what start-up made (gc.freeze) while its app runs, so that a full garbage
collection under load walks only what requests made; the app's shutdown unfreezes it again."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from server.app import build_app
from tests.test_server_support import served, settings


def test_startup_objects_are_frozen_while_the_app_runs() -> None:
    gc.unfreeze()
    app = build_app(settings(grpc_port="off"))
    assert gc.get_freeze_count() == 0
    with TestClient(app) as client:
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the modules, the app and the loaded models
        name = next(iter(served().by_kind.values())).name
        assert client.get(f"/v1/models/{name}").status_code == 200  # serving as before
        assert gc.get_freeze_count() <= frozen  # nothing a request makes is frozen
    assert gc.get_freeze_count() == 0
