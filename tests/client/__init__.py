"""Tests of media_service.client against a live test server."""
