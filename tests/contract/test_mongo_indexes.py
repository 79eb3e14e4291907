"""ensure_index: a concurrent creator's index is success; any other failure is raised."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

from media_service.storage.mongo_indexes import ensure_index


class Collection:
    """create_index fails as FerretDB's second concurrent creator does; the index may exist."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def create_index(self, keys: Any, name: str, **options: Any) -> str:
        raise OperationFailure(f"SQL logic error: index {name} already exists (1)", code=1)

    def index_information(self) -> dict[str, Any]:
        return {name: {} for name in self.existing}


def test_an_index_created_meanwhile_is_success() -> None:
    ensure_index(Collection({"_id_", "state_time"}), [("state", 1)], name="state_time")  # type: ignore[arg-type]


def test_a_failure_without_the_index_is_raised() -> None:
    with pytest.raises(OperationFailure):
        ensure_index(Collection({"_id_"}), [("state", 1)], name="state_time")  # type: ignore[arg-type]
