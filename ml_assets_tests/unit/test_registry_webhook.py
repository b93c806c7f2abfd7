"""The webhook signature is MLflow's own, and forged, stale or unsigned events are refused."""
import time

from mlflow.webhooks.delivery import _generate_hmac_signature

from serving.http.registry_webhook import (
    DELIVERY_HEADER,
    MAX_AGE_SECONDS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    _first_delivery,
    signature,
    verification_problem,
)

BODY = b'{"entity": "model_version_alias", "action": "created", "data": {"name": "m"}}'


def _headers(secret: str, stamp: int, body: bytes = BODY) -> dict[str, str]:
    return {DELIVERY_HEADER: "d-1", TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: _generate_hmac_signature(secret, "d-1", str(stamp),
                                                       body.decode())}


def test_our_signature_is_mlflows():
    assert signature("s3cret", "d-1", "1700000000", BODY) == _generate_hmac_signature(
        "s3cret", "d-1", "1700000000", BODY.decode())


def test_a_delivery_signed_by_mlflow_is_accepted():
    now = int(time.time())
    assert verification_problem("s3cret", _headers("s3cret", now), BODY, now) is None
    # Standard Webhooks allows several signatures (a secret being rotated).
    several = _headers("s3cret", now)
    several[SIGNATURE_HEADER] = "v1,AAAA " + several[SIGNATURE_HEADER]
    assert verification_problem("s3cret", several, BODY, now) is None


def test_forged_tampered_stale_and_unsigned_deliveries_are_refused():
    now = int(time.time())
    wrong = verification_problem("s3cret", _headers("guess", now), BODY, now)
    assert wrong is not None and "ML_REGISTRY_WEBHOOK_SECRET" in wrong
    tampered = verification_problem("s3cret", _headers("s3cret", now),
                                    BODY.replace(b'"m"', b'"x"'), now)
    assert tampered is not None and "does not match" in tampered
    old = now - MAX_AGE_SECONDS - 1
    stale = verification_problem("s3cret", _headers("s3cret", old), BODY, now)
    assert stale is not None and "replayed" in stale
    unsigned = verification_problem("s3cret", {}, BODY, now)
    assert unsigned is not None and SIGNATURE_HEADER in unsigned
    bad_time = verification_problem("s3cret", {**_headers("s3cret", now),
                                               TIMESTAMP_HEADER: "soon"}, BODY, now)
    assert bad_time is not None and "Unix time" in bad_time


def test_a_delivery_id_is_accepted_once():
    """A captured, validly signed delivery re-sent within its 5 minutes is refused."""
    assert _first_delivery("delivery-under-test")
    assert not _first_delivery("delivery-under-test")
    assert _first_delivery("another-delivery")
