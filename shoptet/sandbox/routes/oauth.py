"""The e-shop's add-on OAuth server (reference §1): an add-on's OAuth token -> a 30-minute API token.

It lives on the e-shop host, outside ``/api/``, and answers in OAuth's own shape, not the API envelope.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .common import JSON_CT, StateDep

OAUTH_PATH = "/action/ApiOAuthServer/getAccessToken"

router = APIRouter()


def _json(body: dict, status: int) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON_CT)


@router.get(OAUTH_PATH)
def get_access_token(request: Request, state: StateDep) -> Response:
    auth = request.headers.get("authorization") or ""
    scheme, _, oauth = auth.partition(" ")
    if scheme.lower() != "bearer" or oauth.strip() not in state.oauth_tokens:
        return _json({"error": "invalid_token", "error_description": "The OAuth access token is not valid."}, 401)
    issued = state.issue_access_token(oauth.strip())
    if issued is None:
        return _json(
            {
                "error": "maximum_tokens_reached",
                "error_description": f"Maximum of {state.max_access_tokens} valid access tokens reached.",
            },
            400,
        )
    token, ttl = issued
    return _json({"access_token": token, "expires_in": int(ttl), "token_type": "bearer"}, 200)
