"""Who may do what on a dashboard: viewers read, operators act.

Actions (requeue a dead letter, remove a worker) always need the operator token, sent as
``Authorization: Bearer TOKEN`` (a header, never a cookie: another site cannot make a browser
send it). Reads are open unless a viewer token is set; then they need either token as the
header, or ``?token=`` on the live stream only (``EventSource`` cannot set headers). A token in
an address ends up in logs: it gives at most the viewer role, whichever token it is.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request

__all__ = ["Access", "Denied", "Role"]


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class Denied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Access:
    operator_token: str
    viewer_token: str | None = None

    @classmethod
    def generated(cls, viewer_token: str | None = None) -> Access:
        """A fresh random operator token (printed or written where the operator finds it)."""
        return cls(secrets.token_urlsafe(24), viewer_token)

    def role_of(self, request: Request, *, query_token: bool = False) -> Role | None:
        """The role the request's token gives; None for no token or a wrong one. With
        ``query_token``, a ``?token=`` is taken too, for the viewer role at most."""
        auth = request.headers.get("authorization", "")
        in_query = False
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        elif query_token:
            token, in_query = request.query_params.get("token", ""), True
        else:
            return None
        if not token:
            return None
        if secrets.compare_digest(token.encode(), self.operator_token.encode()):
            return Role.VIEWER if in_query else Role.OPERATOR
        if self.viewer_token is not None and secrets.compare_digest(token.encode(), self.viewer_token.encode()):
            return Role.VIEWER
        return None

    def check(self, request: Request, need: Role, *, query_token: bool = False) -> None:
        role = self.role_of(request, query_token=query_token and need is Role.VIEWER)
        if need is Role.OPERATOR:
            if role is not Role.OPERATOR:
                raise Denied(401 if role is None else 403, "this action needs the operator token")
            return
        if self.viewer_token is not None and role is None:
            raise Denied(401, "this dashboard needs a viewer or operator token")
