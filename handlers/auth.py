"""Auth tag: credential login, Fusion session exchange, the caller's profile."""

from cortex import security
from cortex.app import identity_provider
from cortex.problems import ApiProblem
from models.identity import User
from models.projects import activate_invitations


def login_with_credentials(body):
    """POST /api/auth/login-credentials: email + password → access token and Fusion session id."""
    user = identity_provider().authenticate(body["email"], body["password"])
    if user is None:
        raise ApiProblem(401, "Wrong email or password", headers={"WWW-Authenticate": 'Bearer realm="cortex"'})
    activate_invitations(user)
    session_id = identity_provider().open_session(user)
    return {"accessToken": security.issue_access_token(user.id, user.tenant_id), "sessionId": session_id}, 201


def login(body):
    """POST /api/auth/login: exchange a Fusion session id for a new access token."""
    user = identity_provider().user_for_session(body["fusionSessionId"])
    if user is None:
        raise ApiProblem(
            401, "Fusion session is unknown, expired or revoked", headers={"WWW-Authenticate": 'Bearer realm="cortex"'}
        )
    activate_invitations(user)
    return {"accessToken": security.issue_access_token(user.id, user.tenant_id)}, 201


def get_profile(principal):
    """GET /api/auth/me: who the bearer token belongs to."""
    user = User.get_or_none(User.id == principal.user_id)
    if user is None:
        raise ApiProblem(401, "The user of this token no longer exists", headers={"WWW-Authenticate": 'Bearer realm="cortex"'})
    return {"userId": user.id, "tenantId": user.tenant_id, "username": user.name, "email": user.email}
