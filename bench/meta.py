#!/usr/bin/env python3
"""Metadata micro-benchmark: create, stat and unlink N empty files in one directory.

    python3 bench/meta.py DIR [N]

Creates DIR/meta/ (which must not exist), then times three phases with time.perf_counter:
  create  os.open(O_CREAT|O_EXCL|O_WRONLY, 0o644) + os.close, N times
  stat    os.stat, N times (names in creation order)
  unlink  os.unlink, N times
and prints one JSON object: {"files": N, "create": ops/s, "stat": ops/s, "unlink": ops/s}.
The per-call Python overhead (about a microsecond) is the same on every target.
"""

import json
import os
import sys
import time


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    top = os.path.join(sys.argv[1], "meta")
    n = int(sys.argv[2]) if len(sys.argv) == 3 else 10_000
    os.mkdir(top)
    names = [os.path.join(top, f"f{i:06d}") for i in range(n)]
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    result = {"files": n}

    t = time.perf_counter()
    for p in names:
        os.close(os.open(p, flags, 0o644))
    result["create"] = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for p in names:
        os.stat(p)
    result["stat"] = n / (time.perf_counter() - t)

    t = time.perf_counter()
    for p in names:
        os.unlink(p)
    result["unlink"] = n / (time.perf_counter() - t)

    os.rmdir(top)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
