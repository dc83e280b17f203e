"""``python -m flows.services wait-http URL SECONDS``: the readiness wait of ``scripts/serve.sh`` and
``scripts/mlflow_ui.sh``, which start the Prefect server and the MLflow UI and must not go on before they answer;
``free-port``: a port on 127.0.0.1 nobody listens on now (``scripts/pg.sh``, ``scripts/servers.sh``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.request


def wait_http(url: str, seconds: float) -> bool:
    """True as soon as ``url`` answers 200, False once ``seconds`` have passed without that."""
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return True
        except OSError:  # refused, reset or timed out: the service is not up yet
            pass
        time.sleep(1)
    return False


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; the caller binds it right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.services", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait-http", help="wait until URL answers 200 (exit 1 after SECONDS)")
    w.add_argument("url")
    w.add_argument("seconds", type=float, nargs="?", default=120.0)
    sub.add_parser("free-port", help="print a free TCP port on 127.0.0.1")
    a = p.parse_args(argv)
    if a.cmd == "free-port":
        print(free_port())
        return 0
    if not wait_http(a.url, a.seconds):
        sys.exit(f"{a.url} did not answer within {a.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
