"""Item 5: small-request throughput at 32 keep-alive connections, against a bare Flask endpoint.

The service, the bare app (bench/bare_app.py) and the stack's floor (bench/floor_app.py: the
service's promised work on each request, written plainly with the same libraries and none of
the service's code) run under identical gunicorn settings: the same config file and environment,
so the production defaults (2 gthread workers x 8 threads). wrk (1 thread, 32 connections,
keep-alive) drives each endpoint in turn, and again. The service's /healthz is no target; it
separates what the framework, middleware and logging cost from what authentication and the
database add. The floor's figures say how much of each gap to bare Flask the promises cost on
this stack whoever writes them, and how much is the service's own code.
"""

from __future__ import annotations

from bench import commits, floor_app
from bench.client import WrkResult, upload_file, wrk
from bench.measure import (
    Figure,
    RunContext,
    Target,
    alternate,
    cpu_seconds,
    median,
    ratio_figure,
)
from bench.servers import Gunicorn

# Issue #12's targets.
INFO_RATIO = Target(">=", 0.6, "≥ 0.6")
DOWNLOAD_RATIO = Target(">=", 0.5, "≥ 0.5")
HEALTHZ_RATIO = Target(">=", 0.9, "≥ 0.9")
P99_RATIO = Target("<=", 3.0, "≤ 3")
CONNECTIONS = 32
MANY_CONNECTIONS = 200  # the tail-latency figure: GET /info p99 against the bare app's


def run(ctx: RunContext) -> list[Figure]:
    seconds = 2.0 if ctx.quick else 5.0
    rounds = ctx.rounds  # short runs, and the noisiest figures: more alternations
    kib = ctx.scratch("small-data") / "one-kib.bin"
    kib.write_bytes(bytes(range(256)) * 4)

    ctx.log("  starting the service and the bare Flask app (identical gunicorn settings)")
    with (
        Gunicorn("small-service", ctx.scratch("small-service")) as service,
        Gunicorn("bare-flask", ctx.scratch("bare-flask"), app="bench.bare_app:app") as bare,
        Gunicorn("floor", ctx.scratch("floor"), app="bench.floor_app:app") as floor,
    ):
        auth = {"Authorization": service.create_account()}
        item_id = upload_file(service.port, "/v3/media", kib, auth).json()["id"]
        endpoints: dict[str, tuple[str, dict[str, str]]] = {
            "bare Flask": (f"{bare.url}/bare", {}),
            "GET /info": (f"{service.url}/v3/media/{item_id}/info", auth),
            "1 KiB download": (f"{service.url}/v3/media/{item_id}", auth),
            "service /healthz": (f"{service.url}/healthz", {}),
            **floor_app.endpoints(floor.url),
        }
        workers = {
            name: bare if name == "bare Flask" else floor if name in FLOOR else service
            for name in endpoints
        }
        results: dict[str, list[WrkResult]] = {name: [] for name in endpoints}
        # CPU of the app's workers per request answered: what each request costs the server,
        # whatever share of the machine it got while wrk ran (wrk's own CPU is not in it).
        worker_us: dict[str, list[float]] = {name: [] for name in endpoints}

        def runner(name: str, duration: float) -> float:
            url, headers = endpoints[name]
            pids = workers[name].worker_pids()
            before = cpu_seconds(pids)
            result = wrk(
                ctx.tools["wrk"], url, connections=CONNECTIONS, seconds=duration, headers=headers
            )
            spent = cpu_seconds(pids) - before
            results[name].append(result)
            worker_us[name].append(spent * 1e6 / max(result.requests, 1))
            return result.requests_per_s

        for name in endpoints:  # warm every worker's imports, caches and connections
            runner(name, 1.0)
            results[name].clear()
            worker_us[name].clear()
        ctx.log(f"  wrk: {rounds} rounds of {len(endpoints)} x {seconds:.0f} s")
        samples = alternate(
            rounds, {name: (lambda n=name: runner(n, seconds)) for name in endpoints}
        )

        inputs = (
            f"wrk 1 thread, {CONNECTIONS} connections, keep-alive, {seconds:.0f} s per run, "
            f"alternated {rounds}x; both apps: config/gunicorn.conf.py defaults "
            f"(2 gthread workers x 8 threads); service: SQLite + file store, Basic auth"
        )
        figures = []
        for name, target in (
            ("GET /info", INFO_RATIO),
            ("1 KiB download", DOWNLOAD_RATIO),
            ("service /healthz", HEALTHZ_RATIO),
        ):
            figure = ratio_figure(
                5,
                f"{name} vs bare Flask JSON, req/s",
                inputs
                + (
                    "; the download is counted (one SQLite write each)"
                    if "download" in name
                    else ""
                ),
                {name: samples[name], "bare Flask": samples["bare Flask"]},
                name,
                "bare Flask",
                "req/s",
                target,
            )
            figure.notes.append(_latency_note(name, results[name]))
            figures.append(figure)
        figures[0].notes.append(_latency_note("bare Flask", results["bare Flask"]))
        figures[0].notes.append(_worker_cpu_note(worker_us))
        evidence, rates = commits.evidence(service.data_dir)
        figures[1].notes.append(evidence)
        healthz = figures[2].value or 0.0
        figures[0].bound = (
            "per-request CPU in the two workers, mostly not authentication or the database: the "
            f"service's own /healthz, which calls no backend, reaches only {healthz:.2f} of the "
            "bare endpoint, so the middleware every route shares (request ids, access log line, "
            "metrics, headers) costs about as much as the handler (profile below)."
        )
        figures[1].bound = (
            "the counted download's commit: every download is one SQLite transaction (WAL, "
            f"synchronous=NORMAL: no fsync per count). count_download() alone manages "
            f"{rates['FULL']:,.0f}/s serially with FULL and {rates['NORMAL']:,.0f}/s with NORMAL "
            f"(x{rates['NORMAL'] / rates['FULL']:.0f}); on top comes the per-request overhead "
            "that also bounds GET /info."
        )
        _check_statuses(figures, results)
        figures.extend(_floor_figures(inputs, samples))
        figures.append(_tail_latency(ctx, endpoints, seconds, rounds))

        for figure, name in zip(figures[:2], ("GET /info", "1 KiB download"), strict=True):
            if figure.met is False and ctx.profiler.enabled:
                ctx.log(f"  profiling: {figure.name}")
                figure.profile = ctx.profiler.capture(
                    f"small-{name.split()[-1].strip('/').lower()}",
                    service.pid,
                    lambda n=name: runner(n, seconds),
                )
    return figures


# The floor's endpoint for each of the service's, by the service's name.
FLOOR = {
    "floor /info": "GET /info",
    "floor download": "1 KiB download",
    "floor /healthz": "service /healthz",
}


def _floor_figures(inputs: str, samples: dict[str, list[float]]) -> list[Figure]:
    """Informational: each request's service ÷ floor, and the floor's own ratio to bare Flask."""
    figures = []
    bare = median(samples["bare Flask"])
    for floor_name, name in FLOOR.items():
        figure = ratio_figure(
            5,
            f"{name} vs the stack's floor, req/s",
            inputs + "; floor: bench/floor_app.py, the same promised work without the service's "
            "code (request id, JSON access line, Prometheus samples; Basic auth with a keyed "
            "hash, SQLite read, counted UPDATE, file read)",
            {name: samples[name], floor_name: samples[floor_name]},
            name,
            floor_name,
            "req/s",
            None,
        )
        figure.notes.append(
            f"The floor itself reaches {median(samples[floor_name]) / bare:.2f} of bare Flask: "
            "what the promises cost on this stack however they are written."
        )
        figures.append(figure)
    return figures


def _tail_latency(
    ctx: RunContext,
    endpoints: dict[str, tuple[str, dict[str, str]]],
    seconds: float,
    rounds: int,
) -> Figure:
    """GET /info's p99 at 200 connections divided by the bare app's (lower is better)."""
    ctx.log(f"  wrk: {rounds} rounds of GET /info and bare Flask at {MANY_CONNECTIONS} connections")
    runs: dict[str, list[WrkResult]] = {"GET /info": [], "bare Flask": []}

    def p99(name: str) -> float:
        url, headers = endpoints[name]
        result = wrk(
            ctx.tools["wrk"], url, connections=MANY_CONNECTIONS, seconds=seconds, headers=headers
        )
        runs[name].append(result)
        return result.latency_ms.get("p99", float("nan"))

    samples = alternate(rounds, {name: (lambda n=name: p99(n)) for name in runs})
    service, bare = median(samples["GET /info"]), median(samples["bare Flask"])
    ratio = service / bare
    figure = Figure(
        item=5,
        name=f"GET /info p99 at {MANY_CONNECTIONS} connections vs bare Flask p99",
        inputs=(
            f"wrk 1 thread, {MANY_CONNECTIONS} connections, keep-alive, {seconds:.0f} s per run, "
            f"alternated {rounds}x; both apps: config/gunicorn.conf.py defaults; service: SQLite "
            "+ file store, Basic auth"
        ),
        result=f"GET /info p99 {service:.1f} ms vs bare Flask p99 {bare:.1f} ms (medians)",
        value=ratio,
        value_text=f"{ratio:.2f}",
        target=P99_RATIO,
        samples=samples,
        unit="ms",
        kind="latency",  # lower is better: kept out of the ratio chart
    )
    for name, name_runs in runs.items():
        rate = median([r.requests_per_s for r in name_runs])
        figure.notes.append(_latency_note(name, name_runs) + f" {rate:,.0f} req/s.")
    bad = sum(r.non_2xx + r.socket_errors for rs in runs.values() for r in rs)
    if bad:
        figure.notes.append(
            f"WARNING: {bad} non-2xx responses or socket errors at 200 connections."
        )
    return figure


def _worker_cpu_note(worker_us: dict[str, list[float]]) -> str:
    """Worker CPU per request, and the ratios it alone would give (bare's cost ÷ each one's)."""
    bare = median(worker_us["bare Flask"])
    parts = [f"bare Flask {bare:,.0f} µs"] + [
        f"{name} {median(values):,.0f} µs (ratio by CPU {bare / median(values):.2f})"
        for name, values in worker_us.items()
        if name != "bare Flask"
    ]
    return (
        "Worker CPU per request (user + system of the app's gunicorn workers ÷ requests "
        "answered, medians of the runs): " + ", ".join(parts) + "."
    )


def _latency_note(name: str, runs: list[WrkResult]) -> str:
    p50 = median([r.latency_ms.get("p50", float("nan")) for r in runs])
    p99 = median([r.latency_ms.get("p99", float("nan")) for r in runs])
    return f"{name}: latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (medians of the runs)."


def _check_statuses(figures: list[Figure], results: dict[str, list[WrkResult]]) -> None:
    """Every response must have been a 200: a fast error page is not throughput."""
    for name, runs in results.items():
        bad = sum(r.non_2xx for r in runs)
        errors = sum(r.socket_errors for r in runs)
        if bad or errors:
            figures[0].notes.append(
                f"WARNING: {name} had {bad} non-2xx responses and {errors} socket errors."
            )
