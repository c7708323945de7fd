"""The alias ledger's decisions without a database: names, compare-and-set, when a move is a move, the
event it states and what a past state lists."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlops.errors import FailedPrecondition, InvalidArgument
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.core import aliases


@pytest.mark.parametrize("name", ["production", "canary", "a", "team_b-2"])
def test_alias_names_people_use_are_accepted(name):
    aliases.check_set(pb.SetAliasRequest(model="wine", alias=name, version=1))


@pytest.mark.parametrize("name", ["Production", "2nd", "", "-x", "a" * 64, "with space"])
def test_other_alias_names_are_refused_with_the_rule(name):
    with pytest.raises(
        InvalidArgument, match="lowercase letters, digits, '-' and '_', starting with a letter"
    ):
        aliases.check_set(pb.SetAliasRequest(model="wine", alias=name, version=1))


def test_an_alias_points_at_a_version():
    with pytest.raises(InvalidArgument, match="version must be a model version"):
        aliases.check_set(pb.SetAliasRequest(model="wine", alias="production"))


def test_a_move_to_where_the_alias_points_changes_nothing():
    assert aliases.moves(pb.SetAliasRequest(model="wine", alias="production", version=2), previous=2) is False
    assert aliases.moves(pb.SetAliasRequest(model="wine", alias="production", version=2), previous=1) is True
    assert aliases.moves(pb.SetAliasRequest(model="wine", alias="production", version=1), previous=0) is True


def test_a_move_from_a_version_the_caller_did_not_see_is_refused():
    seen_one = pb.SetAliasRequest(model="wine", alias="production", version=3, expected_version=1)
    assert aliases.moves(seen_one, previous=1) is True
    with pytest.raises(FailedPrecondition) as caught:
        aliases.moves(seen_one, previous=2)
    assert str(caught.value) == (
        "alias wine@production points to version 2, not 1 as expected; re-read it and try again"
    )
    # "expected nowhere" is an expectation too: 0 means the alias must not exist yet
    with pytest.raises(FailedPrecondition, match="points to version 2, not 0"):
        aliases.moves(pb.SetAliasRequest(model="wine", alias="production", version=3, expected_version=0), 2)
    # an unchanged move still checks what the caller expected
    with pytest.raises(FailedPrecondition):
        aliases.moves(pb.SetAliasRequest(model="wine", alias="production", version=2, expected_version=1), 2)


def test_a_deletion_checks_the_expected_version_too():
    aliases.check_expected(pb.DeleteAliasRequest(model="wine", alias="canary"), previous=5)
    aliases.check_expected(
        pb.DeleteAliasRequest(model="wine", alias="canary", expected_version=5), previous=5
    )
    with pytest.raises(FailedPrecondition, match="points to version 0, not 5"):
        aliases.check_expected(pb.DeleteAliasRequest(model="wine", alias="canary", expected_version=5), 0)


def test_the_event_of_a_move_carries_the_ledger_entry():
    when = datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
    event = aliases.changed_event(
        model="wine",
        alias="production",
        from_version=1,
        to_version=2,
        actor="user:alice",
        reason="better",
        changed_at=when,
        change_id=42,
    )
    assert (event.model, event.alias, event.from_version, event.to_version) == ("wine", "production", 1, 2)
    assert (event.actor, event.reason, event.change_id) == ("user:alice", "better", 42)
    assert event.changed_at.ToDatetime(tzinfo=UTC) == when


def test_a_past_state_lists_only_aliases_that_pointed_somewhere():
    states = [
        pb.Alias(model="wine", alias="canary", version=0),
        pb.Alias(model="wine", alias="production", version=3),
    ]
    assert [a.alias for a in aliases.still_pointing(states)] == ["production"]
