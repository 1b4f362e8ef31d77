"""Console sessions: a random id in an HttpOnly cookie, a CSRF token per session, bounded.

A session holds the admin token it was opened with, in this process's memory
only, so every action the console takes is the admin API's own call made with
that token: scopes are checked and the token's name is the audit actor, and a
token revoked in the store stops working in the console at its next action.
Sessions end after ``idle_s`` without use or ``max_age_s`` after sign-in,
whichever comes first; past ``capacity`` the least recently used one goes.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "failsoft_session"
IDLE_S = 30 * 60.0
MAX_AGE_S = 8 * 3600.0
CAPACITY = 256


@dataclass
class Session:
    id: str
    token: str
    actor: str
    csrf: str
    started: float
    seen: float
    flash: list[str] = field(default_factory=list)  # messages shown once, on the next page

    def note(self, message: str) -> None:
        self.flash = [*self.flash[-4:], message[:300]]

    def take_flash(self) -> list[str]:
        shown, self.flash = self.flash, []
        return shown


class Sessions:
    def __init__(
        self,
        now: Callable[[], float],
        *,
        idle_s: float = IDLE_S,
        max_age_s: float = MAX_AGE_S,
        capacity: int = CAPACITY,
        random_token: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._now = now
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._random = random_token
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token: str, actor: str) -> Session:
        """A new session (a fresh id: a sign-in never reuses one, so ids cannot be fixed)."""
        now = self._now()
        self._expire(now)
        while len(self._sessions) >= self.capacity:
            self._sessions.popitem(last=False)
        session = Session(self._random(32), token, actor, self._random(32), now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle time starts again), else None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._now()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.seen = now
        self._sessions.move_to_end(session_id)
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def remaining_s(self, session: Session) -> float:
        """How long the cookie should live: to the session's absolute end."""
        return max(0.0, session.started + self.max_age_s - self._now())

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode(), session.csrf.encode()
        )

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen >= self.idle_s or now - session.started >= self.max_age_s

    def _expire(self, now: float) -> None:
        for session_id in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[session_id]


def cookie_of(headers: list[tuple[bytes, bytes]] | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in the request headers, if any."""
    for key, value in headers or ():
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            found, _, content = part.strip().partition("=")
            if found == name:
                return content
    return None


def set_cookie(value: str, max_age_s: float, *, secure: bool, name: str = COOKIE) -> bytes:
    flags = "; Secure" if secure else ""
    return (
        f"{name}={value}; Path=/ui; Max-Age={int(max_age_s)}; HttpOnly; SameSite=Strict{flags}"
    ).encode()
