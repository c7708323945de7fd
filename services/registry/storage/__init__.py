"""The registry's SQL, one module per aggregate, as keyword-only functions that take the caller's
session (or, for the hot reads, its asyncpg pool) first. Rows keep the public protobuf message in
`body`; these functions hand back messages, never rows."""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from services.registry.common import M, Page, Where, parse
from services.registry.tables import SCHEMA


def q(sql: str):
    """A statement on the registry's schema (`{s}` in `sql`)."""
    return text(sql.replace("{s}", SCHEMA))


async def page_of(
    session: AsyncSession, *, cls: type[M], table: str, where: Where, order: str, page: Page
) -> tuple[list[M], str]:
    """One page of a table's stored messages in `order`, and the next page's token."""
    sql = f"SELECT body FROM {{s}}.{table} WHERE {where.sql} ORDER BY {order} LIMIT :limit OFFSET :offset"
    bodies = (await session.exec(q(sql), params={**where.params, **page.params})).scalars().all()
    bodies, token = page.cut(list(bodies))
    return [parse(cls, body) for body in bodies], token
