"""infra.nats_codes: statuses parse to nats.py's named codes; the pull-ending ones are
exactly 404, 408 and 409; the JetStream error codes are nats-server's."""

from __future__ import annotations

from infra.nats_codes import PULL_ENDED, PULL_UNANSWERED, JsErrorCode, StatusCode, status_of


def test_statuses_parse_to_named_codes() -> None:
    assert status_of({"Status": "408", "Description": "Request Timeout"}) is (
        StatusCode.REQUEST_TIMEOUT
    )
    assert status_of({"Status": "503"}) is StatusCode.SERVICE_UNAVAILABLE
    assert status_of(None) is None and status_of({}) is None
    assert status_of({"Status": "999"}) is None  # unknown: acted on by no one


def test_only_404_408_409_end_a_pull_request() -> None:
    assert {s.value for s in PULL_ENDED} == {"404", "408", "409"}
    assert status_of({"Status": "100"}) not in PULL_ENDED  # an idle heartbeat


def test_a_request_that_reached_no_one_is_503_apart() -> None:
    # No consumer leader (an election): ended, but asked again only after a pause.
    assert PULL_UNANSWERED is status_of({"Status": "503"}) and PULL_UNANSWERED not in PULL_ENDED


def test_jetstream_error_codes_are_nats_servers() -> None:
    # nats-server server/errors.json: JSNoMessageFoundErr, JSStorageResourcesExceededErr,
    # JSClusterNoPeersErrF, JSInsufficientResourcesErr, JSStreamNameExistErr,
    # JSStreamReplicasNotSupportedErr, JSConsumerReplicasExceedsStream
    assert JsErrorCode.NO_MESSAGE_FOUND == 10037
    assert JsErrorCode.STORAGE_RESOURCES_EXCEEDED == 10047
    assert JsErrorCode.NO_SUITABLE_PEERS == 10005
    assert JsErrorCode.INSUFFICIENT_RESOURCES == 10023
    assert JsErrorCode.STREAM_NAME_IN_USE == 10058
    assert JsErrorCode.REPLICAS_NOT_SUPPORTED == 10074
    assert JsErrorCode.CONSUMER_REPLICAS_EXCEED_STREAM == 10126
