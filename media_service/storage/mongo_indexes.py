"""Create an index idempotently, also when several processes start at once."""

from __future__ import annotations

import time
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

ATTEMPTS = 6
FIRST_PAUSE_SECONDS = 0.05


def ensure_index(
    collection: Collection[Any], keys: list[tuple[str, int]], name: str, **options: Any
) -> None:
    """create_index, tolerating a concurrent creator (or dropper) of the same collection.

    MongoDB treats creating an existing index as a no-op, but FerretDB 1.x fails the second of
    two concurrent creations ("index … already exists", code 1): gunicorn workers starting
    together run prepare_database at the same moment. That failure is success if the index is
    there now. It may also not be there: FerretDB reports the clash while another process drops
    and re-creates the collection (the search-count build does), and its catalogue shows the
    index only once that settles. So a failure is retried a few times, with growing pauses,
    before it is raised as it came (a conflicting definition fails every attempt).
    """
    pause = FIRST_PAUSE_SECONDS
    for attempt in range(ATTEMPTS):
        try:
            collection.create_index(keys, name=name, **options)
            return
        except OperationFailure:
            if name in collection.index_information():
                return
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(pause)
        pause *= 2
