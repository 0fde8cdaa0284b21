"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), in-process (ASGI, the
app's lifespan started once): no 5xx, and every answer conforms to the schema (status code documented,
content type, body, headers), schema-invalid requests are refused with a 4xx, no error body echoes a
traceback or a file path.

``make test`` runs a few cases per operation; ``make soak`` (``--run-soak``) runs well over 1,000 in all.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (schemathesis brings hypothesis)
from hypothesis import strategies as st  # noqa: E402
from test_server_support import served  # noqa: E402
from test_server_support import settings as server_settings  # noqa: E402

from server.app import build_app  # noqa: E402

FAST_EXAMPLES = 80  # generated requests in make test (15 operations, positive and negative)
SOAK_EXAMPLES = 1200  # in make soak
LEAKS = re.compile(r"Traceback|File \"|/work/|/tmp/|site-packages|\.py\", line|line \d+, in ")

ACCEPTED = ["2xx", "401", "404", "409", "413", "422", "429"]
CONFIG = {
    "generation": {"mode": "all"},  # positive and negative cases
    "checks": {
        # T and F are the model's, not the schema's: a schema-valid body of the wrong shape is a 422
        "positive_data_acceptance": {"expected-statuses": ACCEPTED},
    },
    "operations": [
        {
            # V2 infer also takes application/octet-stream (the binary tensor extension): its framing (a
            # JSON header of Inference-Header-Content-Length bytes, then the tensors) is beyond a schema,
            # so any bytes are schema-valid, and bytes that are no such framing are a 400
            "include-path-regex": "/infer$",
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
        },
        {
            # load and unload need --model-control explicit, which the fuzzed server does not have: 400
            "include-path-regex": "^/v2/repository/models/",
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}},
        },
    ],
}


@pytest.fixture(scope="module")
def fuzz_schema() -> Iterator:
    from schemathesis.config import SchemathesisConfig
    from schemathesis.python import asgi

    app = build_app(server_settings(max_body_bytes=64 * 1024, max_classify_batch=8))
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))
    asgi.shutdown_lifespans()


def no_leaks(ctx, response, case) -> None:
    """Error bodies never carry a traceback, a source path or a line number."""
    if response.status_code >= 400:
        text = response.text
        for value in (case.path_parameters or {}).values():  # an unknown name is echoed back, as sent
            text = text.replace(json.dumps(str(value))[1:-1], "").replace(str(value), "")
        assert not LEAKS.search(text), f"error body leaks internals: {text[:300]}"


def cases(schema) -> st.SearchStrategy:
    """Positive and negative cases of every operation; half of those with a model name get a served one
    (else nearly every case would be a 404 and no model would ever run)."""
    from schemathesis import GenerationMode

    names = [served().name(kind) for kind in served().by_kind]
    both = st.one_of([schema.as_strategy(generation_mode=mode) for mode in GenerationMode])

    def name_it(pair):
        case, name = pair
        if name is not None and "name" in (case.path_parameters or {}):
            case.path_parameters["name"] = name
        return case

    return st.tuples(both, st.sampled_from([*names, None, None, None])).map(name_it)


def fuzz(schema, examples: int) -> Counter[str]:
    tally: Counter[str] = Counter()

    @given(case=cases(schema))
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=False,
    )
    def run(case) -> None:
        response = case.call_and_validate(additional_checks=[no_leaks])
        tally["cases"] += 1
        tally[f"{response.status_code}"] += 1
        assert response.status_code < 500, response.text

    run()
    return tally


@pytest.mark.slow
def test_fuzz_api(fuzz_schema) -> None:
    tally = fuzz(fuzz_schema, FAST_EXAMPLES)
    print("schemathesis", schemathesis.__version__, dict(tally))
    assert tally["cases"] >= FAST_EXAMPLES


@pytest.mark.soak
def test_fuzz_api_soak(fuzz_schema) -> None:
    tally = fuzz(fuzz_schema, SOAK_EXAMPLES)
    print("schemathesis", schemathesis.__version__, dict(tally))
    assert tally["cases"] >= 1000
