"""Composition root of the console: settings, the services' channels, the event feed, Jaeger, and
the web server (`python -m services.console`)."""

from __future__ import annotations

import logging

import uvicorn

from mlops.jaeger import JaegerClient
from mlops.settings import BusSettings, GrpcClientSettings, KafkaSettings
from mlops.telemetry import setup_telemetry
from services.console.app import build_app
from services.console.clients import Platform
from services.console.feed import Feed
from services.console.settings import ConsoleSettings


def replay_identity(settings: ConsoleSettings) -> KafkaSettings | None:
    """The cluster as the identity that replays dead letters; None where none is configured."""
    if not settings.replay_sasl_username or settings.replay_sasl_password is None:
        return None
    return KafkaSettings().model_copy(
        update={
            "sasl_username": settings.replay_sasl_username,
            "sasl_password": settings.replay_sasl_password,
        }
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = ConsoleSettings()
    # its calls to the services and to Jaeger as client spans of mlops-console (never their metadata)
    telemetry = setup_telemetry("console")
    security = GrpcClientSettings()
    platforms: list[Platform] = []  # made on the server's event loop: gRPC aio channels belong to one
    feed = (
        Feed(
            KafkaSettings(),
            BusSettings(),
            recent=settings.recent_events,
            dead_letters=settings.dead_letters_kept,
            clients=settings.max_sse_clients,
            replay_as=replay_identity(settings),
        )
        if settings.events
        else None
    )
    jaeger = JaegerClient(settings.jaeger_query_url) if settings.jaeger_query_url else None

    async def started() -> None:
        platforms.append(Platform(settings, security))
        if feed is not None:
            feed.start()

    async def stopping() -> None:
        if feed is not None:
            await feed.stop()
        for platform in platforms:
            await platform.close()
        if jaeger is not None:
            jaeger.close()
        telemetry.provider.force_flush(timeout_millis=3_000)

    app = build_app(
        settings,
        lambda token: platforms[0].as_person(token),
        feed=feed,
        jaeger=jaeger,
        on_startup=[started],
        on_shutdown=[stopping],
    )
    # No access log from uvicorn: it would write `/login?token=…` to the log. The app logs paths only.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="info",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
