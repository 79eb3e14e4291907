"""Create an index idempotently, also when several processes start at once."""

from __future__ import annotations

from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure


def ensure_index(
    collection: Collection[Any], keys: list[tuple[str, int]], name: str, **options: Any
) -> None:
    """create_index, tolerating a concurrent creator of the same index.

    MongoDB treats creating an existing index as a no-op, but FerretDB 1.x fails the second of
    two concurrent creations ("index … already exists", code 1): gunicorn workers starting
    together run ensure_schema at the same moment. That failure is success if the index is there
    now; any other failure (a conflicting definition, say) is raised as it came.
    """
    try:
        collection.create_index(keys, name=name, **options)
    except OperationFailure:
        if name not in collection.index_information():
            raise
