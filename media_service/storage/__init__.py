"""Ports (interfaces.py) and adapters: files and s3 for bytes, sqlite and mongo for metadata."""
