"""Thin Flask blueprints: parse and validate, call MediaService, shape the response."""
