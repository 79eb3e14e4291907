"""Ports (interfaces.py) and their adapters: files, s3 (blobs); sqlite, mongo (metadata, credentials)."""
