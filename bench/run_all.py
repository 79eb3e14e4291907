"""Run the benchmarks, print the results, and write docs/benchmarks.md with its chart.

    python -m bench.run_all              # everything (what `make bench` runs)
    python -m bench.run_all --quick      # a smoke run: small sizes, one alternation, no docs
    python -m bench.run_all --only 5,6   # some items (3 and 4 cover every store)

Installs what it needs on first use (Debian's nginx-light and wrk, matplotlib and py-spy into
the running environment), starts every server on 127.0.0.1, and removes its scratch directory
at the end unless --keep is given. docs/ is written only by a full run (or with --docs), so a
partial or quick run never replaces the published figures with partial ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench import limits, offload, report, search, small_requests, transfers
from bench.measure import Figure, RunContext, machine, machine_line
from bench.profiling import Profiler
from bench.servers import REPO_ROOT
from bench.tools import (
    ToolMissing,
    ensure_commands,
    ensure_python_tools,
    find_command,
    version_of,
)

# Items 1-4 share servers and data per store, so they run as one scenario per store.
SCENARIOS: list[tuple[frozenset[int], str, Callable[[RunContext], list[Figure]]]] = [
    (frozenset({1, 3, 4}), "items 1, 3, 4: large transfers on the file store", transfers.run_files),
    (frozenset({2, 3, 4}), "items 2, 3, 4: large transfers on S3", transfers.run_s3),
    (frozenset({2, 3, 4}), "items 2, 3, 4: large transfers on MinIO", transfers.run_minio),
    (frozenset({5}), "item 5: small requests", small_requests.run),
    (frozenset({6}), "item 6: search latency", search.run),
    (frozenset({7}), "item 7: exact-limit downloads", limits.run),
    (frozenset({8}), "item 8: offloaded downloads, proxied vs offloaded", offload.run),
]
BUDGET_SECONDS = 15 * 60


def _parse_items(text: str) -> frozenset[int]:
    try:
        items = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected item numbers like 1,5: {text!r}") from None
    if not items or not items <= set(range(1, 9)):
        raise argparse.ArgumentTypeError("items are numbered 1 to 8")
    return items


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one alternation")
    parser.add_argument(
        "--only", type=_parse_items, metavar="ITEMS", help="comma-separated item numbers (1-8)"
    )
    parser.add_argument(
        "--rounds", type=int, help="alternations of the cheap pairs and wrk runs (default 5)"
    )
    parser.add_argument(
        "--heavy-rounds", type=int, help="alternations of the expensive pairs (default 3)"
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="do not profile missed targets with py-spy"
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="write docs/ even for a partial run")
    docs.add_argument("--no-docs", action="store_true", help="never write docs/")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    return parser


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _software() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    nginx = find_command("nginx")
    wrk = find_command("wrk")
    return {
        "gunicorn": dist("gunicorn"),
        "Flask": dist("flask"),
        "SQLite": sqlite3.sqlite_version,
        "boto3": dist("boto3"),
        "moto": dist("moto"),
        "nginx": version_of([nginx, "-v"]).replace("nginx version: nginx/", "") if nginx else "?",
        "wrk": version_of([wrk, "-v"]).split(" [")[0].replace("wrk ", "") if wrk else "?",
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    items = args.only or frozenset(range(1, 9))
    full_run = args.only is None and not args.quick
    started_at = datetime.now(UTC)
    started = time.monotonic()
    info = machine()
    _log(f"media-service benchmarks on {machine_line(info)}, load {info['load_at_start']}")

    try:
        tools = ensure_commands(["nginx", "wrk"], log=_log)
        ensure_python_tools(["matplotlib"] + ([] if args.no_profile else ["py-spy"]), log=_log)
    except ToolMissing as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    software = _software()

    work = Path(tempfile.mkdtemp(prefix="media-bench-"))
    ctx = RunContext(
        work=work,
        tools=tools,
        quick=args.quick,
        rounds=args.rounds or (1 if args.quick else 5),
        heavy_rounds=args.heavy_rounds or (1 if args.quick else 3),
        profiler=Profiler(None if args.no_profile else find_command("py-spy"), work / "profiles"),
        log=_log,
    )
    figures: list[Figure] = []
    failures: list[str] = []
    try:
        for scenario_items, title, run in SCENARIOS:
            if not scenario_items & items:
                continue
            _log(f"{title} (load average {os.getloadavg()[0]:.2f})")
            scenario_started = time.monotonic()
            try:
                produced = run(ctx)
            except Exception as error:  # one broken scenario must not lose the others' figures
                failures.append(f"{title}: {type(error).__name__}: {error}")
                _log(f"  FAILED: {type(error).__name__}: {error}")
                continue
            figures += produced
            _log(f"  done in {time.monotonic() - scenario_started:.0f} s")
    finally:
        if args.keep:
            _log(f"scratch directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    figures.sort(key=lambda f: f.item)  # stable: each scenario's own order within an item
    seconds = time.monotonic() - started
    info["load_at_end"] = f"{os.getloadavg()[0]:.2f}"
    print()
    print(report.console_table(figures))
    print()
    for f in figures:
        if f.met is False and f.target is not None and f.value is not None:
            print(f"MISSED {f.item}. {f.name}: {f.target.shortfall(f.value)}")
    for failure in failures:
        print(f"FAILED {failure}")
    print(f"total time: {seconds / 60:.1f} min (budget {BUDGET_SECONDS // 60} min)")

    options = " ".join(argv if argv is not None else sys.argv[1:])
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started_at.isoformat(),
                    "seconds": seconds,
                    "machine": info,
                    "software": software,
                    "figures": [f.as_dict() for f in figures],
                    "failures": failures,
                },
                indent=2,
            )
        )
    if (full_run or args.docs) and not args.no_docs:
        md, png = report.write(
            figures,
            REPO_ROOT / "docs",
            machine=info,
            software=software,
            started=started_at,
            seconds=seconds,
            options=options,
        )
        _log(f"wrote {md.relative_to(REPO_ROOT)}" + (f" and {png.name}" if png else ""))
    elif not args.no_docs:
        _log("docs/benchmarks.md not written (partial or --quick run; --docs forces it)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
