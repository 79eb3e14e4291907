"""Run moto's ThreadedMotoServer on 127.0.0.1 until standard input closes (or SIGTERM).

Started by bench.servers.MotoS3 as `python -m bench.moto_main --port N`: a process of its own,
so that the benchmark's boto3 client and moto's request handling do not share one GIL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # The parent holds our stdin open; EOF means it is gone (even if it was killed).
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
