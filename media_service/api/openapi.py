"""flask-smorest, made to speak problem+json: the Api's error documentation, and a Blueprint
whose argument parser fails with our 400 rather than webargs' 422, and reads request bodies
strictly (`location="body"`)."""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any, NoReturn

import flask_smorest
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from marshmallow import ValidationError
from webargs.flaskparser import FlaskParser

from media_service.api.forms import json_or_form_fields
from media_service.errors import PROBLEM_JSON, ValidationFailed
from media_service.schemas.media import ProblemSchema


class ProblemParser(FlaskParser):
    """webargs' parser, failing as every other validation does: 400 naming the parameters.

    Its `body` location is the request body as api/forms.py reads it: a JSON object, or a form's
    fields, bounded in size and strictly decoded. webargs' own json, form and json_or_form
    locations cannot stand in for it: they read a body of any size, fail with a 500 on deeply
    nested JSON, store U+FFFD for text that is not UTF-8 (request.form), and take the first of
    repeated fields and pass over file parts where we answer 400.
    """

    DEFAULT_VALIDATION_STATUS = 400
    MAX_BODY_BYTES = 256 * 1024
    __location_map__ = {**FlaskParser.__location_map__, "body": "load_body"}

    def load_body(self, req: Any, schema: Any) -> dict[str, Any]:
        return json_or_form_fields(self.MAX_BODY_BYTES)

    def handle_error(
        self,
        error: ValidationError,
        req: Any,
        schema: Any,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        # {location: {field: [reasons]}}: the location is ours to know, not the client's.
        messages: dict[str, Any] = {}
        for by_location in error.messages.values() if isinstance(error.messages, dict) else []:
            if isinstance(by_location, Mapping):
                messages.update(by_location)
        raise ValidationFailed.from_messages(messages or {"request": error.messages})


class Blueprint(flask_smorest.Blueprint):
    """The blueprint every documented view uses: @blp.arguments validates with ProblemParser."""

    ARGUMENTS_PARSER = ProblemParser()
    # A `body` argument is documented as the JSON request body; a view that also takes it as a
    # form adds those content types with @blp.doc.
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **flask_smorest.Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "body": "application/json",
    }


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
