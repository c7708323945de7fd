"""The registry's shared rules without a database: paging tokens, list filters, time stamps and field checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mlops.errors import InvalidArgument
from mlops.events.v1 import data_pb2
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import (
    Page,
    Where,
    check_model_name,
    check_sha,
    check_uri,
    json_text,
    moment,
    same_fields,
    timestamp,
)
from services.registry.settings import RegistrySettings

SETTINGS = RegistrySettings(default_page_size=3, max_page_size=5)


def test_a_page_size_of_zero_is_the_default_and_no_page_is_larger_than_the_maximum():
    assert Page(0, "", SETTINGS).size == 3
    assert Page(4, "", SETTINGS).size == 4
    assert Page(500, "", SETTINGS).size == 5
    assert Page(2, "", SETTINGS).params == {"limit": 3, "offset": 0}, "one row more says a next page exists"


def test_a_negative_page_size_is_refused_with_its_value():
    with pytest.raises(InvalidArgument, match="page_size must not be negative, got -1"):
        Page(-1, "", SETTINGS)


def test_tokens_walk_every_row_once_and_the_last_page_has_none():
    rows = list(range(7))
    seen, token, pages = [], "", 0
    while True:
        page = Page(3, token, SETTINGS)
        window = rows[page.params["offset"] : page.params["offset"] + page.params["limit"]]
        chunk, token = page.cut(window)
        seen.extend(chunk)
        pages += 1
        if not token:
            break
    assert seen == rows and pages == 3


def test_a_page_that_fits_exactly_has_no_next_token():
    assert Page(3, "", SETTINGS).cut([1, 2, 3]) == ([1, 2, 3], "")
    rows, token = Page(3, "", SETTINGS).cut([1, 2, 3, 4])
    assert rows == [1, 2, 3] and Page(3, token, SETTINGS).offset == 3


@pytest.mark.parametrize("token", ["not base64!", "bm90IGEgbnVtYmVy"])  # the second is "not a number"
def test_a_token_this_server_did_not_issue_is_refused(token):
    with pytest.raises(InvalidArgument, match="page_token is not one this server issued"):
        Page(3, token, SETTINGS)


def test_where_keeps_only_the_filters_that_are_set():
    where = Where(model="wine", version=0, state=2, dataset="")
    assert where.sql == "TRUE AND model = :model AND state = :state"
    assert where.params == {"model": "wine", "state": 2}
    where.add("passed = :passed", passed=False)
    assert where.sql.endswith("AND passed = :passed") and where.params["passed"] is False


def test_where_between_uses_only_the_bounds_the_request_has():
    request = pb.ListRunsRequest(model="wine")
    assert Where().between("started_at", request, "started_after", "started_before").sql == "TRUE"
    request.started_after.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    where = Where().between("started_at", request, "started_after", "started_before")
    assert where.sql == "TRUE AND started_at >= :started_after"
    assert where.params == {"started_after": datetime(2026, 1, 2, tzinfo=UTC)}


def test_an_unset_timestamp_is_the_default_and_a_set_one_keeps_its_moment():
    assert moment(Timestamp()) is None
    fallback = datetime(2026, 3, 4, tzinfo=UTC)
    assert moment(Timestamp(), fallback) == fallback
    when = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert moment(timestamp(when), fallback) == when
    assert timestamp(None) == Timestamp()


def test_an_event_from_a_record_carries_the_fields_both_have():
    record = pb.DatasetVersion(dataset="wine", version=3, sha256="a" * 64, format="csv", row_count=10)
    event = same_fields(record, data_pb2.DatasetVersionRecorded)
    assert (event.dataset, event.version, event.sha256, event.row_count) == ("wine", 3, "a" * 64, 10)


def test_maps_are_stored_as_the_same_text_whatever_their_order():
    assert json_text({"b": "2", "a": "1"}) == json_text({"a": "1", "b": "2"}) == '{"a": "1", "b": "2"}'


def test_field_checks_name_the_field_and_the_value():
    check_model_name("wine-quality")
    with pytest.raises(InvalidArgument, match="model name 'Wine_Quality' is invalid"):
        check_model_name("Wine_Quality")
    check_sha("0" * 64, "sha256")
    with pytest.raises(InvalidArgument, match="artifact_sha256 must be 64 lowercase hex digits, got 'ABC'"):
        check_sha("ABC", "artifact_sha256")
    check_uri("file:///tmp/x.csv", "uri")
    with pytest.raises(InvalidArgument, match="uri must be an s3:// or file:// URI, got 'http://x'"):
        check_uri("http://x", "uri")
