"""Item 6 on MongoDB: the search benchmark against the server of MEDIA_BENCH_MONGO_URL.

The same stages, account mix, queries and sampling as bench/search.py, on a database of its own
on that server (dropped afterwards). Items go in with insert_many of pre-built documents (the
adapter's own record encoding), and their per-minute counts with one bulk of upserts, never
through the API. The figures name the server (`buildInfo`: FerretDB reports its own version).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import MongoClient

from bench import search  # the SQLite scenario's stages, queries and checks
from bench.client import Session
from bench.measure import Figure, RunContext, median, percentile
from bench.servers import Gunicorn
from media_service.settings import Settings
from media_service.storage import mongo_counts, records
from media_service.storage.interfaces import ItemState, MediaItem
from media_service.storage.mongo import MongoDatabase, MongoMediaRepository

_BULK = 10_000  # documents per insert_many


def server_name(client: MongoClient[Any]) -> str:
    info = client.admin.command("buildInfo")
    if "ferretdbVersion" in info:
        return f"FerretDB {info['ferretdbVersion']}"
    return f"MongoDB {info.get('version', '?')}"


def database_url(base: str, name: str) -> str:
    """`base` (any database path and query) pointed at database `name`."""
    head, _, query = base.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{name}" + (f"?{query}" if query else "")


class MongoLoader:
    """Bulk-inserts READY items with random ids and creation times, and their minute counts."""

    def __init__(self, repository: MongoMediaRepository, now: datetime, seed: int = 6) -> None:
        self.repository = repository
        self.now = now
        self.rng = random.Random(seed)
        self.tally: Counter[tuple[str, str, int]] = Counter()
        created = now - timedelta(minutes=1)
        self.template = records.item_record(
            MediaItem(
                id="template",
                account_id="template",
                application_id=None,
                original_file_name="clip.mp4",
                mime_type="video/mp4",
                store_id="file",
                store_meta_params={"filesize": "1048576"},
                max_downloads_allowed=0,  # unlimited: no downloads_left field
                times_downloaded=0,
                etag="0" * 32,
                media_size=1_048_576,
                time_created=created,
                time_last_updated=created,
                time_content_modified=created,
                public=False,
                state=ItemState.READY,
            )
        )
        del self.template["id"]

    def _docs(self, account: str, count: int) -> list[dict[str, Any]]:
        rng, span = self.rng, int(search.SPREAD.total_seconds() * 1000)
        docs = []
        for _ in range(count):
            item_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            created = records.utc_ms(
                self.now - timedelta(milliseconds=60_000 + rng.randrange(span))
            )
            doc = {"_id": item_id, **self.template}
            doc.update(
                account_id=account,
                store_key=item_id,  # the stored blob key (records.STORE_KEY)
                time_created=created,
                time_last_updated=created,
                time_content_modified=created,
            )
            docs.append(doc)
        return docs

    def add(self, batches: list[tuple[str, int]]) -> float:
        """Insert `count` items for each (account, count); return the seconds it took."""
        started = time.perf_counter()
        items = self.repository.db.collection("media_items")
        for account, count in batches:
            for start in range(0, count, _BULK):
                docs = self._docs(account, min(_BULK, count - start))
                items.insert_many(docs, ordered=False)
                for doc in docs:
                    key = mongo_counts.minute_key(doc)
                    self.tally[(key["account_id"], key["application_id"], key["minute"])] += 1
        # Every item loaded so far, counted afresh: the counts of the stages before are replaced
        # rather than updated key by key.
        counts = self.repository.db.collection("media_counts")
        counts.drop()  # not delete_many({}): see docs/ferretdb.md
        self.repository._counts.ensure_indexes()
        rows = [mongo_counts.count_document(a, p, m, n) for (a, p, m), n in self.tally.items()]
        for start in range(0, len(rows), _BULK):
            counts.insert_many(rows[start : start + _BULK], ordered=False)
        return time.perf_counter() - started


def run(ctx: RunContext, url: str) -> list[Figure]:
    stages = search.QUICK_STAGES if ctx.quick else search.STAGES
    others = 5_000 if ctx.quick else search.OTHER_ITEMS
    # At least a few samples, more while the budget lasts: every FerretDB 1.x query but one by
    # _id scans the collection (no filter or sort pushdown), so a search there takes seconds.
    least, most, budget = (3, 10, 5.0) if ctx.quick else (3, 60, 25.0)
    name = f"media_bench_{uuid.uuid4().hex[:10]}"
    bench_url = database_url(url, name)
    client: MongoClient[Any] = MongoClient(url, serverSelectionTimeoutMS=5000)
    server = server_name(client)
    settings = Settings(database_url=bench_url, storage_url="file:///unused", backend_timeout=600)
    database = MongoDatabase.from_settings(settings)
    repository = MongoMediaRepository(database)
    try:
        repository.prepare_database()
        loader = MongoLoader(repository, datetime.now(UTC))
        latency: dict[str, dict[str, list[float]]] = {"first page": {}, "page 500": {}}
        paths = {
            "first page": f"/v3/media?page_size={search.PAGE_SIZE}",
            "page 500": f"/v3/media?page_size={search.PAGE_SIZE}&page_index={search.DEEP_PAGE}",
        }
        loads, breakdown = [], []
        have = 0
        data_dir = ctx.scratch("search-mongo")
        env = {"MEDIA_DATABASE_URL": bench_url, "MEDIA_BACKEND_TIMEOUT": "120"}
        with Gunicorn("search-mongo", data_dir, env=env) as gunicorn:
            auth = {"Authorization": gunicorn.create_account(search.ACCOUNT)}
            for stage in stages:
                batches = [(search.ACCOUNT, stage - have)]
                if have == 0:
                    per_other = others // search.OTHER_ACCOUNTS
                    batches += [(f"other-{n}", per_other) for n in range(search.OTHER_ACCOUNTS)]
                rows = sum(count for _, count in batches)
                ctx.log(f"  {server}: loading {rows:,} documents ({search._label(stage)} items)")
                seconds = loader.add(batches)
                loads.append(f"{rows:,} documents in {seconds:.0f} s")
                have = stage
                session = Session(gunicorn.port, auth)
                try:
                    for request_path in paths.values():  # warm up
                        session.request("GET", request_path)
                    values, bodies = search._sample(session, paths, least, most, budget)
                finally:
                    session.close()
                search._check(bodies, stage)
                for page in paths:
                    latency[page][str(stage)] = values[page]
                whole, total = _in_process(repository)
                breakdown.append(
                    f"{search._label(stage)}: repository search() {whole:.1f} ms, "
                    f"of which the total {total:.1f} ms"
                )
                ctx.log(
                    f"  {search._label(stage)}: p95 first "
                    f"{percentile(values['first page'], 95):.1f} ms, page 500 "
                    f"{percentile(values['page 500'], 95):.1f} ms; in process search() "
                    f"{whole:.1f} ms, total {total:.1f} ms"
                )
    finally:
        client.drop_database(name)
        client.close()
        database.close()

    inputs = (
        f"{server} (service indexes and media_counts) with {others // 1000} k items of "
        f"{search.OTHER_ACCOUNTS} other accounts plus the searched account's "
        f"{', '.join(search._label(s) for s in stages)}, all created in the last 6 days; "
        f"GET /v3/media?page_size={search.PAGE_SIZE}, Basic auth, one keep-alive connection, "
        f"{least}-{most} requests per page and stage (alternating), 2 gthread workers"
    )
    figures = []
    for page, values in latency.items():
        figure = search._growth_figure(
            f"Search p95 on {server} at {search._label(stages[-1])} ÷ at "
            f"{search._label(stages[0])}, {page}",
            inputs,
            values,
            f"{page} ({server})",
            search.TARGET,
        )
        figure.notes.append("In-process: " + "; ".join(breakdown) + ".")
        figure.notes.append("Bulk loads: " + "; ".join(loads) + ".")
        figures.append(figure)
    return figures


def _in_process(repository: MongoMediaRepository, repeat: int = 3) -> tuple[float, float]:
    """Median ms of the repository's whole search() and of its total alone."""
    whole, total = [], []
    for _ in range(repeat):
        query = search._query(0)
        started = time.perf_counter()
        repository.search(query)
        whole.append((time.perf_counter() - started) * 1000)
        start, end = records.check_query(query)
        scope = {"account_id": query.scope.account_id, "state": "ready"}
        started = time.perf_counter()
        repository._counts.total(scope, start, end)
        total.append((time.perf_counter() - started) * 1000)
    return median(whole), median(total)
