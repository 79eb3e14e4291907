"""A typed Python client of the Media API v3 (this service or Vonage's), built on requests.

    from media_service.client import JwtAuth, MediaClient

    auth = JwtAuth.from_private_key(application_id, private_key_pem)
    with MediaClient("https://media.example.com", auth=auth) as media:
        item = media.upload_file("hello.wav", public=True, title="Hello")
        for found in media.search(page_size=50):
            print(found.id, found.original_file_name)
        media.download(item.id, "copy.wav")

Everything it raises is a MediaClientError; errors the service answers are MediaApiError
subclasses carrying the problem+json fields.
"""

from media_service.client.auth import (
    Auth,
    BasicAuth,
    CachedTokenMinter,
    JwtAuth,
    TokenProvider,
)
from media_service.client.download import ContentStream
from media_service.client.errors import (
    Forbidden,
    InsufficientStorage,
    InvalidParameter,
    MediaApiError,
    MediaClientError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from media_service.client.media_client import MediaClient
from media_service.client.models import DownloadResult, MediaItem, SearchPage
from media_service.client.multipart import CHUNK_SIZE

__all__ = [
    "CHUNK_SIZE",
    "Auth",
    "BasicAuth",
    "CachedTokenMinter",
    "ContentStream",
    "DownloadResult",
    "Forbidden",
    "InsufficientStorage",
    "InvalidParameter",
    "JwtAuth",
    "MediaApiError",
    "MediaClient",
    "MediaClientError",
    "MediaItem",
    "NotFound",
    "SearchPage",
    "TokenProvider",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "ValidationError",
]
