"""Integration tests: the real gunicorn, CLI and S3 endpoints, over HTTP on loopback."""
