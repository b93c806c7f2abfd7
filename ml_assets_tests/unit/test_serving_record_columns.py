"""/predict/batch's and /invocations' column-wise fast path (`record_rows`): on seeded
random batches, clean and dirty, it never accepts what the generated pydantic models
refuse, and whenever it answers, its rows are exactly theirs (values and types); when it
declines, the pydantic path (and its error wording) decides. It must also answer most
clean batches, or it would be a fast path in name only."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from pydantic import ValidationError

from ml_assets_tests.api.test_open_inference import BAD, GOOD, NUMBER_SPECS, SPECS
from serving.model.feature_specs import FeatureSpec
from serving.model.request_models import build_request_models
from serving.protocols.v2.columns import record_rows

JSON_BAD = {kind: [v for v in values if v == v and v not in (float("inf"), float("-inf"))]
            for kind, values in BAD.items()}  # what a JSON body can hold


def _draw(rng: random.Random, spec: FeatureSpec, bad: float):
    if rng.random() < bad:
        return rng.choice(JSON_BAD[spec.kind])
    if spec.allowed is not None:
        return rng.choice(list(spec.allowed))
    return rng.choice(GOOD[spec.kind])


@pytest.mark.parametrize("specs, policy, others", [
    (SPECS, "accept", False), (SPECS, "reject", False), (NUMBER_SPECS, "accept", False),
    (NUMBER_SPECS, "reject", False), (SPECS, "reject", True), (NUMBER_SPECS, "accept", True)],
    ids=["mixed-accept", "mixed-reject", "numbers-accept", "numbers-reject",
         "invocations-mixed", "invocations-numbers"])
def test_the_column_path_answers_only_what_the_request_models_accept(specs, policy, others):
    requests = build_request_models(specs, 50, policy=policy)
    rng = random.Random(f"records-{policy}-{len(specs)}-{others}")
    fast = clean = 0
    for _ in range(1500):
        n = rng.randint(1, 6) if rng.random() < 0.95 else rng.choice([0, 51])
        bad = rng.choice([0.0, 0.0, 0.03, 0.1, 0.3])
        records = [{spec.name: _draw(rng, spec, bad) for spec in specs
                    if not rng.random() < 0.01} for _ in range(n)]  # a key left out
        if rng.random() < 0.05 and records:
            records[0]["unknown"] = 1.0
        # What the pydantic path answers, from the same JSON text the service gets.
        body = json.dumps({"records": records}).encode()
        try:
            if others:
                validated = requests.lenient_rows.validate_python(records)
                if not 0 < len(records) <= 50:
                    raise ValueError("row count")  # parse_rows refuses these first
            else:
                validated = requests.records_of(requests.batch.model_validate_json(body))
            expected = [requests.row_of(r) for r in validated]
        except (ValidationError, ValueError):
            expected = None
        try:  # as the service parses it (orjson refuses integers beyond 64 bits)
            parsed = orjson.loads(body)["records"]
        except orjson.JSONDecodeError:
            parsed = None
        got = record_rows(parsed, requests, 50, others=others)
        if got is not None:
            assert expected is not None, ("the column path accepted a refused batch",
                                          records)
            assert got == expected, records
            assert [[type(v) for v in row] for row in got] == \
                [[type(v) for v in row] for row in expected], records
            fast += 1
        clean += expected is not None
    assert clean > 300, clean  # both sides well exercised
    assert fast >= 0.8 * clean if specs is NUMBER_SPECS else fast > 0.3 * clean, (fast, clean)
