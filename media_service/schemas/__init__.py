"""marshmallow schemas: the API's inputs and outputs, and the source of the OpenAPI document."""
