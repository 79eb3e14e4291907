"""Item 7: exact download limits, 4 workers and 200 concurrent clients on one limited item.

Two phases, both anonymous downloads of a public 1 KiB item by wrk (2 threads, 200 keep-alive
connections) with a Lua script that counts the answers by status:

* throughput: the limit is set far above what the run can reach, so every request is a counted
  download (the conditional UPDATE ... RETURNING, with its fsync) and the rate is the counted
  downloads per second;
* exactness: a new item whose limit is about half of what the run would reach. Exactly `limit`
  answers must be 200, every other answer 403, and the item's `times_downloaded` must equal the
  limit. Requests still in flight when wrk stops come after the limit, so they are 403s that
  count nothing: the comparison is exact.

The throughput runs alternate with the same runs against the stack's floor (bench/floor_app.py:
the promised work of a counted download written plainly, without the service's code) under the
same four workers, so the figure says how much of the gap to the target is the service's own.
"""

from __future__ import annotations

from bench import commits, floor_app
from bench.client import STATUS_COUNTER_LUA, Session, WrkResult, upload_file, wrk
from bench.measure import Figure, RunContext, Target, alternate, median, ratio_figure
from bench.servers import Gunicorn

WORKERS = 4
CONNECTIONS = 200
UNREACHABLE = 1_000_000_000
EXACT = Target("==", 1.0, "exact")
COUNTED_RATE = Target(">=", 3000.0, "≥ 3,000/s")  # issue #12


def run(ctx: RunContext) -> list[Figure]:
    seconds = 3.0 if ctx.quick else 8.0
    data = ctx.scratch("limits-data")
    one_kib = data / "one-kib.bin"
    one_kib.write_bytes(bytes(range(256)) * 4)
    script = data / "count-statuses.lua"
    script.write_text(STATUS_COUNTER_LUA)

    ctx.log(f"  starting gunicorn ({WORKERS} workers)")
    with (
        Gunicorn("limits", ctx.scratch("limits"), workers=WORKERS) as server,
        Gunicorn(
            "limits-floor", ctx.scratch("limits-floor"), workers=WORKERS, app="bench.floor_app:app"
        ) as floor,
    ):
        auth = {"Authorization": server.create_account()}
        session = Session(server.port, auth)

        def new_item(limit: int) -> str:
            fields = {"public": "true", "max_downloads_allowed": str(limit)}
            return str(
                upload_file(server.port, "/v3/media", one_kib, auth, fields=fields).json()["id"]
            )

        def times_downloaded(item_id: str) -> int:
            return int(session.json("GET", f"/v3/media/{item_id}/info")["times_downloaded"])

        def hammer(item_id: str) -> WrkResult:
            return wrk(
                ctx.tools["wrk"],
                f"{server.url}/v3/media/{item_id}",
                connections=CONNECTIONS,
                seconds=seconds,
                threads=2,
                script=script,
            )

        floor_url, floor_headers = floor_app.endpoints(floor.url)["floor download"]
        floor_other = 0

        def hammer_floor() -> float:
            nonlocal floor_other
            result = wrk(
                ctx.tools["wrk"],
                floor_url,
                connections=CONNECTIONS,
                seconds=seconds,
                threads=2,
                headers=floor_headers,
                script=script,
            )
            floor_other += sum(result.statuses.get(k, 0) for k in ("other", "refused"))
            return result.requests_per_s

        ctx.log(f"  throughput: {ctx.heavy_rounds} x {seconds:.0f} s, limit not reached")
        busy = new_item(UNREACHABLE)
        hammer(busy)  # warm-up: every worker's connections and caches
        hammer_floor()
        unseen: list[int] = []
        other = 0

        def counted_run() -> float:
            nonlocal other
            before = times_downloaded(busy)
            result = hammer(busy)
            counted = times_downloaded(busy) - before
            # Downloads the server counted whose answer wrk stopped waiting for at the end.
            unseen.append(counted - result.statuses.get("ok", 0))
            other += result.statuses.get("other", 0) + result.statuses.get("refused", 0)
            return result.requests_per_s

        samples = alternate(
            ctx.heavy_rounds, {"counted downloads": counted_run, "floor downloads": hammer_floor}
        )
        rates = samples["counted downloads"]
        rate = median(rates)
        throughput = Figure(
            item=7,
            name="Counted downloads/s, 200 clients, 4 workers",
            inputs=(
                f"public 1 KiB item, anonymous GETs, limit not reached; wrk 2 threads, "
                f"{CONNECTIONS} keep-alive connections, {seconds:.0f} s per run, "
                f"{ctx.heavy_rounds} runs; {WORKERS} gthread workers x 8 threads, SQLite "
                "(WAL; counts committed with synchronous=NORMAL)"
            ),
            result=f"{rate:,.0f} counted downloads/s (median; runs: "
            + ", ".join(f"{r:,.0f}" for r in rates)
            + ")",
            value=rate,
            value_text=f"{rate:,.0f} req/s",
            samples={"counted downloads (200 clients)": rates},
            unit="req/s",
            kind="limit",
            target=COUNTED_RATE,
        )
        versus_floor = ratio_figure(
            7,
            "Counted downloads/s vs the stack's floor, 200 clients, 4 workers",
            throughput.inputs + "; floor: bench/floor_app.py (the same promised work without "
            "the service's code; Basic auth, which the service's anonymous downloads skip)",
            samples,
            "counted downloads",
            "floor downloads",
            "req/s",
            None,
        )
        if floor_other:
            versus_floor.notes.append(f"WARNING: the floor answered {floor_other} non-200s.")
        floor_rate = median(samples["floor downloads"])
        if rate < COUNTED_RATE.threshold:
            throughput.bound = (
                "the CPU of two cores shared by wrk and four workers, not SQLite (which alone "
                "counts ~24,000/s, note above): the same promised work written plainly with the "
                f"same libraries (the stack's floor, next row) reaches {floor_rate:,.0f}/s."
            )
        throughput.notes.append(
            f"Counted by the server but not seen by wrk when it stopped (in flight): "
            f"{', '.join(map(str, unseen))}; non-200 answers: {other}."
        )

        evidence, _rates = commits.evidence(server.data_dir)
        throughput.notes.append(evidence)

        limit = max(100, int(rate * seconds / 2))
        ctx.log(f"  exactness: limit {limit:,}, {seconds:.0f} s")
        limited = new_item(limit)
        result = hammer(limited)
        ok = result.statuses.get("ok", 0)
        refused = result.statuses.get("refused", 0)
        odd = result.statuses.get("other", 0)
        final = times_downloaded(limited)
        exact = ok == limit == final and odd == 0
        exactness = Figure(
            item=7,
            name="Download limit exact under 200 clients, 4 workers",
            inputs=(
                f"public 1 KiB item with max_downloads_allowed={limit:,} (about half of what "
                f"the run reaches); wrk 2 threads, {CONNECTIONS} connections, {seconds:.0f} s, "
                f"anonymous; {WORKERS} workers"
            ),
            result=(
                f"{ok:,} answers 200, {refused:,} answers 403, {odd} other; "
                f"times_downloaded = {final:,}; {result.requests_per_s:,.0f} req/s overall"
            ),
            value=1.0 if exact else 0.0,
            value_text="exact"
            if exact
            else f"off by {final - limit:+,} (server), {ok - limit:+,} (client)",
            target=EXACT,
            samples={"answers": [ok, refused, odd], "times_downloaded": [final]},
            kind="limit",
        )
        if result.socket_errors:
            exactness.notes.append(f"wrk reported {result.socket_errors} socket errors.")
        session.close()
    return [throughput, versus_floor, exactness]
