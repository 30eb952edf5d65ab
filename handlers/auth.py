"""Auth tag: credential login, Fusion session exchange, the caller's profile."""

from cortex.http import security
from cortex.http.app import client_address, identity_provider, login_throttle
from cortex.http.logins import password_login
from cortex.http.problems import unauthorized
from models.identity import profile_body
from models.projects import activate_invitations


def login_with_credentials(body):
    """POST /api/auth/login-credentials: email + password → access token and Fusion session id; 429 while the
    account or the client address has too many failed logins (cortex/http/logins.py)."""
    user = password_login(identity_provider(), login_throttle(), body["email"], body["password"], client_address())
    activate_invitations(user)
    session_id = identity_provider().open_session(user)
    return {"accessToken": security.issue_access_token(user.id, user.tenant_id), "sessionId": session_id}, 201


def login(body):
    """POST /api/auth/login: exchange a Fusion session id for a new access token."""
    user = identity_provider().user_for_session(body["fusionSessionId"])
    if user is None:
        raise unauthorized("Fusion session is unknown, expired or revoked", ["bearer"])
    activate_invitations(user)
    return {"accessToken": security.issue_access_token(user.id, user.tenant_id)}, 201


def get_profile(principal):
    """GET /api/auth/me: who the bearer token belongs to."""
    body = profile_body(principal.user_id)
    if body is None:
        raise unauthorized("The user of this token no longer exists", ["bearer"])
    return body
