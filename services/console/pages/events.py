"""The live feed (server-sent events fed from the topics) and the dead letters, with replay for
operators."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from services.console import auth
from services.console.app import back, caller, render
from services.console.clients import may_operate

KEEPALIVE_S = 15.0
NO_FEED = "the console reads no event topics here (MLOPS_CONSOLE_EVENTS=false or no Kafka settings)"


async def live_page(request: Request):
    feed = request.app.state.feed
    return render(request, "live.html", events=feed.recent(100) if feed else [], feed=feed, no_feed=NO_FEED)


async def stream(request: Request):
    """`text/event-stream` of new events; one queue per browser, bounded, and a cap on browsers."""
    feed = request.app.state.feed
    if feed is None:
        return PlainTextResponse(NO_FEED, status_code=404)
    queue = feed.listen()
    if queue is None:
        return PlainTextResponse(
            "too many browsers follow the feed; try again later",
            status_code=503,
            headers={"Retry-After": "30"},
        )

    async def events():
        try:
            yield "retry: 5000\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: platform\ndata: {event.as_json()}\n\n"
        finally:
            feed.leave(queue)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


async def dead_letters_page(request: Request):
    feed = request.app.state.feed
    return render(
        request, "dead_letters.html", feed=feed, letters=feed.dead_letters() if feed else {}, no_feed=NO_FEED
    )


async def replay(request: Request):
    """Publish a dead letter's original record to its topic again, for operators only. The console
    publishes it, so it asks the deployer's access table whether this person operates, first."""
    feed = request.app.state.feed
    form = await request.form()
    if not auth.csrf_ok(request, request.state.session, form.get(auth.CSRF_FIELD)):
        return render(
            request, "error.html", 403, error="the form has expired or came from elsewhere: reload the page"
        )
    if feed is None:
        return back("/dead-letters", error=NO_FEED)
    if not await may_operate(caller(request)):
        return back("/dead-letters", error="replay refused: replaying a dead letter needs an operator")
    letter = feed.dead_letter(request.path_params["topic"], request.path_params["letter"])
    if letter is None:
        return back("/dead-letters", error="no such dead letter (kept letters are the newest only)")
    try:
        await feed.replay(letter)
    except Exception as error:
        return back("/dead-letters", error=f"replay failed: {type(error).__name__}: {str(error)[:200]}")
    return back("/dead-letters", notice=f"replayed {letter.id} of {letter.topic} to {letter.original_topic}")


routes = [
    Route("/live", live_page),
    Route("/events", stream),
    Route("/dead-letters", dead_letters_page),
    Route("/dead-letters/{topic}/{letter}/replay", replay, methods=["POST"]),
]
