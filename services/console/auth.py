"""Signing in with a bearer token, like the CLI: the token is checked by a registry read made with
it, kept server-side behind an HttpOnly, SameSite=Strict session cookie, and never written to a
page or a log. Every action carries the session's CSRF token."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.requests import Request

COOKIE = "mlops_console"
CSRF_FIELD = "csrf"


@dataclass
class Session:
    token: str = field(repr=False)
    operator: bool
    expires_at: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def role(self) -> str:
        return "operator" if self.operator else "viewer"


class Sessions:
    """Sessions by cookie value, bounded: at `limit`, the oldest sign-in is dropped."""

    def __init__(self, ttl_s: int, limit: int) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def create(self, token: str, *, operator: bool) -> str:
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = Session(token=token, operator=operator, expires_at=time.time() + self.ttl_s)
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires_at < time.time():
            del self._by_id[session_id]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._by_id)


def session_of(request: Request) -> Session | None:
    return request.app.state.sessions.get(request.cookies.get(COOKIE))


def csrf_ok(request: Request, session: Session, submitted: str | None) -> bool:
    """The form's CSRF token matches the session's, and the request comes from this origin."""
    origin = request.headers.get("origin")
    if origin and origin not in ("null", f"{request.url.scheme}://{request.url.netloc}"):
        return False
    return bool(submitted) and hmac.compare_digest(submitted.encode(), session.csrf.encode())
