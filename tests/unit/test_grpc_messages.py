"""A status message stays under gRPC's limit on trailers, however much of the input it quotes."""

from __future__ import annotations

import grpc

from mlops.errors import NotFound
from mlops.grpc.errors import MAX_MESSAGE_BYTES, bounded, status_for


def test_a_short_message_is_kept_whole():
    assert bounded("data set 'wine' has no version 9") == "data set 'wine' has no version 9"


def test_a_message_quoting_a_huge_name_is_cut_and_says_how_much():
    code, message = status_for(NotFound(f"data set {'h' * 900_000!r} has no version 1"), "/m", None)
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert message.startswith("data set 'hhh") and message.endswith(" bytes cut)")
    cut = int(message.rsplit("(", 1)[1].split()[0])
    assert cut == len(f"data set {'h' * 900_000!r} has no version 1".encode()) - len(
        message.split("…")[0].encode()
    )


def test_a_cut_never_splits_a_character():
    message = bounded("é" * 5000)
    assert len(message.encode()) <= MAX_MESSAGE_BYTES
    assert set(message.split("…")[0]) == {"é"}
