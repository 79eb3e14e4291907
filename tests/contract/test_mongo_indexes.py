"""ensure_index: a concurrent creator's index is success; a lasting failure is raised."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

from media_service.storage import mongo_indexes
from media_service.storage.mongo_indexes import ensure_index


class Collection:
    """create_index fails as FerretDB's second concurrent creator does, `failures` times."""

    def __init__(self, existing: set[str], failures: int = 1_000) -> None:
        self.existing = existing
        self.failures = failures
        self.attempts = 0

    def create_index(self, keys: Any, name: str, **options: Any) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OperationFailure(f"SQL logic error: index {name} already exists (1)", code=1)
        self.existing.add(name)
        return name

    def index_information(self) -> dict[str, Any]:
        return {name: {} for name in self.existing}


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mongo_indexes.time, "sleep", lambda seconds: None)


def test_an_index_created_meanwhile_is_success() -> None:
    collection = Collection({"_id_", "state_time"})
    ensure_index(collection, [("state", 1)], name="state_time")  # type: ignore[arg-type]
    assert collection.attempts == 1


def test_a_clash_while_the_collection_is_dropped_is_retried() -> None:
    # The clash is reported, the index is not listed (a dropper is midway), the retry creates it.
    collection = Collection({"_id_"}, failures=2)
    ensure_index(collection, [("state", 1)], name="state_time")  # type: ignore[arg-type]
    assert collection.attempts == 3
    assert "state_time" in collection.existing


def test_a_lasting_failure_without_the_index_is_raised() -> None:
    collection = Collection({"_id_"})
    with pytest.raises(OperationFailure):
        ensure_index(collection, [("state", 1)], name="state_time")  # type: ignore[arg-type]
    assert collection.attempts == mongo_indexes.ATTEMPTS
