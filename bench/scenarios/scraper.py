"""A scraper in a process of its own, as Prometheus is: ``python -m bench.scenarios.scraper``.

Reads one URL per line on stdin, GETs it with the headers given as JSON in the
first argument, decompresses the body as a scraper would, and answers each line
with the seconds from request to the last byte decompressed.  P6 uses it so
that the scrape's client side does not run on the measured daemon's event loop.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
import urllib.request


def main() -> None:
    """Serve scrape requests from stdin until it closes."""
    headers = json.loads(sys.argv[1])
    for line in sys.stdin:
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(line.strip(), headers=headers)) as r:
            body = r.read()
            if r.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
        if not body.endswith(b"# EOF\n"):
            sys.exit(f"incomplete exposition from {line.strip()}")
        print(time.perf_counter() - started, flush=True)


if __name__ == "__main__":
    main()
