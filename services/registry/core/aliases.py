"""Aliases and their ledger. A move is compare-and-set on the version the caller saw, runs under the
model's lock, and is written to the ledger and the outbox (`AliasChanged`) in its transaction; a move
to where the alias already points changes nothing and leaves no entry."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from mlops.db import Database
from mlops.errors import FailedPrecondition, NotFound
from mlops.events.v1 import model_pb2
from mlops.outbox import Outbox
from mlops.registry.v1 import registry_pb2 as pb
from services.registry.common import ALIAS_NAME, Page, moment, need, now, timestamp
from services.registry.settings import RegistrySettings
from services.registry.storage import aliases as storage
from services.registry.storage import models, versions


def check_set(request: pb.SetAliasRequest) -> None:
    need(
        bool(ALIAS_NAME.match(request.alias)),
        f"alias {request.alias!r} is invalid: lowercase letters, digits, '-' and '_', starting with a letter",
    )
    need(request.version > 0, "version must be a model version (1 or more)")


def check_expected(request: pb.SetAliasRequest | pb.DeleteAliasRequest, previous: int) -> None:
    """Compare-and-set: refuse the move when the alias no longer points where the caller saw it."""
    if request.HasField("expected_version") and request.expected_version != previous:
        raise FailedPrecondition(
            f"alias {request.model}@{request.alias} points to version {previous}, not "
            f"{request.expected_version} as expected; re-read it and try again"
        )


def moves(request: pb.SetAliasRequest, previous: int) -> bool:
    """Whether setting the alias moves it from `previous` (0: it points nowhere); refused when the
    caller expected another version."""
    check_expected(request, previous)
    return previous != request.version


def changed_event(
    *,
    model: str,
    alias: str,
    from_version: int,
    to_version: int,
    actor: str,
    reason: str,
    changed_at: datetime,
    change_id: int,
) -> model_pb2.AliasChanged:
    return model_pb2.AliasChanged(
        model=model,
        alias=alias,
        from_version=from_version,
        to_version=to_version,
        actor=actor,
        reason=reason,
        changed_at=timestamp(changed_at),
        change_id=change_id,
    )


def still_pointing(states: list[pb.Alias]) -> list[pb.Alias]:
    """The aliases of a past state that pointed somewhere (a deletion leaves version 0)."""
    return [state for state in states if state.version]


class Aliases:
    def __init__(self, database: Database, outbox: Outbox, settings: RegistrySettings) -> None:
        self.database = database
        self.outbox = outbox
        self.settings = settings

    async def set_alias(self, request: pb.SetAliasRequest) -> pb.SetAliasResponse:
        check_set(request)
        async with self.database.transaction() as tx:
            await models.lock_model(tx, name=request.model)
            if not await versions.version_exists(tx, model=request.model, version=request.version):
                raise NotFound(f"model {request.model!r} has no version {request.version}")
            previous = await storage.alias_version(tx, model=request.model, alias=request.alias) or 0
            changed = moves(request, previous)
            changed_at = now()
            if not changed:
                alias = await storage.alias_of(tx, model=request.model, alias=request.alias)
                return pb.SetAliasResponse(alias=alias, previous_version=previous, changed=False)
            alias = pb.Alias(
                model=request.model,
                alias=request.alias,
                version=request.version,
                updated_by=request.actor,
                reason=request.reason,
                updated_at=timestamp(changed_at),
            )
            await storage.upsert_alias(tx, alias=alias, updated_at=changed_at)
            change_id = await self._ledger(
                tx, request, from_version=previous, to_version=request.version, changed_at=changed_at
            )
        return pb.SetAliasResponse(alias=alias, previous_version=previous, changed=True, change_id=change_id)

    async def delete_alias(self, request: pb.DeleteAliasRequest) -> pb.DeleteAliasResponse:
        async with self.database.transaction() as tx:
            await models.lock_model(tx, name=request.model)
            current = await storage.delete_alias(tx, model=request.model, alias=request.alias)
            previous = current or 0
            # A refusal rolls the deletion back with the transaction.
            check_expected(request, previous)
            if current is None:
                return pb.DeleteAliasResponse(previous_version=0, deleted=False)
            change_id = await self._ledger(tx, request, from_version=previous, to_version=0, changed_at=now())
        return pb.DeleteAliasResponse(previous_version=previous, deleted=True, change_id=change_id)

    async def _ledger(
        self,
        tx: AsyncSession,
        request: pb.SetAliasRequest | pb.DeleteAliasRequest,
        *,
        from_version: int,
        to_version: int,
        changed_at: datetime,
    ) -> int:
        """Write the move to the ledger and its `AliasChanged` to the outbox: the ledger's change id."""
        move = {
            "model": request.model,
            "alias": request.alias,
            "from_version": from_version,
            "to_version": to_version,
            "actor": request.actor,
            "reason": request.reason,
            "changed_at": changed_at,
        }
        change_id = await storage.insert_change(tx, **move)
        await self.outbox.add(tx, changed_event(**move, change_id=change_id))
        return change_id

    async def list_aliases(self, request: pb.ListAliasesRequest) -> pb.ListAliasesResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        async with self.database.session() as session:
            aliases, token = await storage.list_aliases(session, model=request.model, page=page)
        return pb.ListAliasesResponse(aliases=aliases, next_page_token=token)

    async def get_alias_history(self, request: pb.GetAliasHistoryRequest) -> pb.GetAliasHistoryResponse:
        page = Page(request.page_size, request.page_token, self.settings)
        at = moment(request.at)
        async with self.database.session() as session:
            changes, token = await storage.changes(
                session, model=request.model, alias=request.alias, at=at, page=page
            )
            aliases_at = []
            if at is not None:
                states = await storage.states_at(session, model=request.model, alias=request.alias, at=at)
                aliases_at = still_pointing(states)
        return pb.GetAliasHistoryResponse(changes=changes, aliases_at=aliases_at, next_page_token=token)

    async def changes_of_version(self, model: str, version: int) -> list[pb.AliasChange]:
        """Every move of an alias to or from the version, latest first (for its lineage)."""
        async with self.database.session() as session:
            return await storage.changes_of_version(session, model=model, version=version)
