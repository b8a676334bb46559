"""The dashboard's web plumbing: templates, who is logged in, CSRF and origin checks.

The dashboard uses the API's tokens. Logging in trades a token for a session cookie
(HttpOnly, SameSite=Strict, Secure over HTTPS, path ``/dashboard``); the session lives in
Redis (:mod:`atomq.dashboard.sessions`). Every POST carries the session's CSRF token and,
when the browser sends an ``Origin``, it must be this host. Scopes are the API's: ``read`` to
look, ``write`` to requeue, ``admin`` to delete; what each sees follows
:mod:`atomq.core.visibility`. A token bound to a user cannot log in: the dashboard shows
every user's work.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from atomq.api.auth import Principal, TokenEntry
from atomq.api.state import AppState
from atomq.core.text import printable
from atomq.core.visibility import SCOPES
from atomq.dashboard.sessions import Session, SessionStore

#: The session cookie.
SESSION_COOKIE = "atomq_session"

#: Double-submit cookie protecting the login form itself (there is no session yet).
LOGIN_COOKIE = "atomq_login"

#: Where the dashboard lives; cookies are scoped to it.
BASE = "/dashboard"

#: Sent with every dashboard response. No inline script or style is ever needed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    """The logged-in person: the token's principal and the session."""

    principal: Principal
    session: Session
    session_id: str

    def allows(self, scope: str) -> bool:
        return self.principal.allows(scope)


@cache
def templates() -> Jinja2Templates:
    """The dashboard's templates (built once per process; they never change at run time)."""
    env = Environment(
        loader=PackageLoader("atomq.dashboard", "templates"),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # Text stored with a lone surrogate is shown escaped rather than failing the page.
        finalize=_printable,
    )
    env.filters["when"] = when
    env.filters["epoch_when"] = lambda value, zone=None: when(datetime.fromtimestamp(float(value), UTC), zone)
    env.filters["age"] = age
    env.filters["relative"] = relative
    env.filters["href"] = href
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, default=str)
    return Jinja2Templates(env=env)


def _printable(value: Any) -> Any:
    """What a template prints: text UTF-8 cannot encode comes out as ``\\udXXX``."""
    if isinstance(value, str) and not value.isascii():
        shown = printable(value)
        # Already markup; only surrogates change (into backslash text), so it stays safe.
        return Markup(shown) if isinstance(value, Markup) else shown  # noqa: S704
    return value


def when(value: datetime | str | None, zone: tzinfo | None = None) -> str:
    """``2026-02-06 14:30:05 UTC`` in the configured zone, or a dash."""
    if value is None or value == "":
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if zone is not None:
        moment = moment.astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def href(link: str | None) -> str:
    """A source's link as a URL: absolute paths and http(s) URLs as given, the rest under the dashboard."""
    if not link:
        return BASE
    if (link.startswith("/") and not link.startswith("//")) or link.startswith(("http://", "https://")):
        return link
    return f"{BASE}/{link}"


def age(seconds: float | None) -> str:
    """``42s``, ``4m12s``, ``2h05m``, ``3d4h`` or a dash."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600}h"


def relative(value: datetime | str | None, now: datetime) -> str:
    """``in 4m12s`` or ``3m ago``."""
    if value is None or value == "":
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = (moment - now).total_seconds()
    return f"in {age(delta)}" if delta >= 0 else f"{age(-delta)} ago"


def store(state: AppState) -> SessionStore:
    return SessionStore(state.redis, idle_ttl=state.settings.dashboard_session_ttl)


def principal_for(entries: list[TokenEntry], session: Session) -> Principal | None:
    """The token a session came from, as configured now (removed token: ``None``)."""
    found: TokenEntry | None = None
    for entry in entries:
        if hmac.compare_digest(entry.digest, session.token_digest):
            found = entry
    return found.principal() if found else None


def viewer(request: Request, state: AppState) -> Viewer | None:
    """Who is logged in, or ``None``. Raises Redis errors (the caller shows them)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    sessions = store(state)
    session = sessions.get(session_id)
    if session is None:
        return None
    principal = principal_for(state.tokens, session)
    if principal is None or principal.user is not None:
        # The token was revoked (so is every session made with it), or bound to a user since:
        # the dashboard shows every user's work, so a user's token cannot hold a session.
        sessions.delete(session_id)
        return None
    return Viewer(principal, session, session_id)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on every cross-site POST; no Origin means a same-site navigation
        # or a non-browser client, which the CSRF token still has to pass.
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == host.lower()


def safe_next(value: str | None, default: str = BASE) -> str:
    """``value`` when it is a dashboard path, else ``default`` (no open redirects)."""
    if not value or not value.startswith(BASE) or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def redirect(location: str) -> Response:
    return secure(RedirectResponse(location, status_code=303))


def to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    from urllib.parse import quote

    return redirect(f"{BASE}/login?next={quote(safe_next(target), safe='/')}")


def render(
    request: Request,
    state: AppState,
    name: str,
    context: dict[str, Any],
    *,
    who: Viewer | None = None,
    status: int = 200,
) -> Response:
    """Render a template with what every page needs (scope, CSRF token, zone, now)."""
    now = context.pop("now", None) or datetime.now(UTC)
    full_path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    page_path = request.url.path.replace(f"{BASE}/partials", BASE, 1)
    base: dict[str, Any] = {
        "who": who,
        "scope": who.principal.scope if who else None,
        "can_write": bool(who and who.allows("write")),
        "can_admin": bool(who and who.allows("admin")),
        "csrf": who.session.csrf if who else "",
        "tz": state.settings.tz,
        "now": now,
        "refresh": state.settings.dashboard_refresh,
        "base": BASE,
        "flashes": [],
        "path": request.url.path,
        "full_path": full_path,
        # Fragments are served under /partials; their buttons must lead back to the page.
        "page_path": page_path,
        "page_full_path": page_path + (f"?{request.url.query}" if request.url.query else ""),
    }
    base.update(context)
    response = templates().TemplateResponse(request, name, base, status_code=status)
    return secure(response)


def problem(
    request: Request, state: AppState, status: int, title: str, message: str, who: Viewer | None = None
) -> Response:
    """An error page (HTML, not the API's JSON) with the status and a sentence to act on."""
    return render(
        request,
        state,
        "error.html",
        {"status": status, "title": title, "message": message},
        who=who,
        status=status,
    )


def fragment_error(status: int, message: str) -> Response:
    """What the auto-refresh gets when it cannot have a fresh fragment."""
    return secure(HTMLResponse(f'<p class="banner bad">{_escape(message)}</p>', status_code=status))


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def scope_needed(scope: str) -> str:
    """A sentence for a 403: which scope the action needs."""
    assert scope in SCOPES
    return f"this needs a token with the {scope} scope; log in with one"
