"""The flask-smorest Api, documenting every error as what it is: RFC 7807 problem+json."""

from __future__ import annotations

import http

from flask_smorest import Api
from flask_smorest.utils import prepare_response

from media_service.errors import PROBLEM_JSON
from media_service.schemas.media import ProblemSchema


class MediaApi(Api):
    """Api whose default error responses are application/problem+json with ProblemSchema."""

    ERROR_SCHEMA = ProblemSchema

    def _register_responses(self) -> None:
        # flask-smorest documents its default error responses with the success content type
        # (application/json); ours leave through errors.py as problem+json.
        for status in http.HTTPStatus:
            response: dict[str, object] = {"description": status.phrase}
            if not (100 <= status < 200) and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM_JSON)
            self.spec.components.response(status.name, response, lazy=True)
        default: dict[str, object] = {
            "description": "Default error response",
            "schema": self.ERROR_SCHEMA,
        }
        prepare_response(default, self.spec, PROBLEM_JSON)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, default, lazy=True)
