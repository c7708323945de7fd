"""One row per model name: the counters that keep spec and model versions gapless under racing
writers, and the lock that orders every change to a model's versions and aliases."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from services.registry.storage import q


async def lock_model(session: AsyncSession, *, name: str) -> tuple[int, int]:
    """Create the model's counter row if needed and lock it: (latest version, latest spec version)."""
    await session.exec(
        q("INSERT INTO {s}.models (name) VALUES (:n) ON CONFLICT DO NOTHING"), params={"n": name}
    )
    row = (
        await session.exec(
            q("SELECT latest_version, latest_spec_version FROM {s}.models WHERE name = :n FOR UPDATE"),
            params={"n": name},
        )
    ).one()
    return row[0], row[1]


async def set_latest_version(session: AsyncSession, *, name: str, version: int) -> None:
    await session.exec(
        q("UPDATE {s}.models SET latest_version = :v WHERE name = :n"), params={"v": version, "n": name}
    )


async def set_latest_spec_version(session: AsyncSession, *, name: str, version: int) -> None:
    await session.exec(
        q("UPDATE {s}.models SET latest_spec_version = :v WHERE name = :n"), params={"v": version, "n": name}
    )
