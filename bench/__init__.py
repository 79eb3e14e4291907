"""Benchmarks for media-service (`make bench`, i.e. `python -m bench.run_all`).

Not tests: these scripts start real servers on loopback (gunicorn with the production config,
nginx, a moto S3 server), measure the service side by side with a baseline, and print ratios.
Nothing here is collected by pytest (no `test_` file names, and pytest only looks in tests/).

Modules:
    run_all        the entry point: options, the run, the report
    tools          installs what the run needs (nginx, wrk, matplotlib, py-spy), idempotently
    servers        gunicorn, nginx and moto as child processes on free loopback ports
    client         lean HTTP clients (streamed upload, download into a reused buffer) and wrk
    measure        alternation, medians, percentiles, RSS sampling, figures and targets
    profiling      py-spy around a run of the service side, summarised as top functions
    transfers      items 1-4: large downloads and uploads, file store and S3, worker RSS
                   (one scenario per store)
    small_requests item 5: keep-alive throughput against a bare Flask endpoint
    search         item 6: search latency on SQLite with 10 k, 100 k and 1 M items
    limits         item 7: exact download limits under 200 concurrent clients
    commits        what a counted download costs SQLite (fsync), evidence for items 5 and 7
    report         the console table, docs/benchmarks.md and docs/benchmarks.png
    bare_app       the bare Flask JSON endpoint item 5 compares against
    moto_main      runs moto's ThreadedMotoServer in a process of its own
"""
