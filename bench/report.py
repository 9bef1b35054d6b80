#!/usr/bin/env python3
"""Turn one run's raw results into the Markdown table that bench/run.sh prints and records.

    python3 bench/report.py RESULTS_DIR TARGET... [--ratio A/B]...

RESULTS_DIR holds, per target and round R (0, 1, ...), the fio JSON outputs
<target>.seqwrite.R.json, <target>.seqread.R.json (and the 4-job seqwrite4 and seqread4,
with group_reporting), <target>.randread.R.json and the meta.py output <target>.meta.R.json.
Each cell is the median over the rounds; a line under the table gives the widest spread
(max - min) / median of any cell, a measure of the run's noise. TARGETs are the column
names, in order; "native" is required. Ratio columns: every other target over native, then
plugfs and plugfs-nopt over passthrough_ll (libfuse's C peer) and over bindfs, where those
are measured; each --ratio A/B adds the column A/B (bench/wfs.sh: wfs over RedoxFS). Every
number is higher-is-better.
"""

import glob
import json
import os
import statistics
import sys

# (row label, source file suffix, how to read the value)
FIO_ROWS = [
    ("seq write 1 MiB, MiB/s", "seqwrite", "write", "bw"),
    ("seq read 1 MiB, MiB/s", "seqread", "read", "bw"),
    ("seq write 1 MiB 4 jobs, MiB/s", "seqwrite4", "write", "bw"),
    ("seq read 1 MiB 4 jobs, MiB/s", "seqread4", "read", "bw"),
    ("rand read 4 KiB, IOPS", "randread", "read", "iops"),
    ("rand write 4 KiB, IOPS", "randwrite", "write", "iops"),
]
META_ROWS = [
    ("create, ops/s", "create"),
    ("stat, ops/s", "stat"),
    ("unlink, ops/s", "unlink"),
]


def load_rounds(results, target, what):
    """Every round's document for one target and workload, in round order."""
    paths = glob.glob(os.path.join(glob.escape(results), f"{target}.{what}.*.json"))
    if not paths:
        raise SystemExit(f"report.py: no results for {target} {what} in {results}")
    docs = []
    for p in sorted(paths, key=lambda p: int(p.rsplit(".", 2)[1])):
        with open(p) as f:
            docs.append(json.load(f))
    return docs


def fio_value(doc, ddir, kind):
    job = doc["jobs"][0]
    if job.get("error"):
        raise SystemExit(f"fio job {job.get('jobname')} failed with error {job['error']}")
    side = job[ddir]
    if side["io_bytes"] == 0:
        raise SystemExit(f"fio job {job.get('jobname')} moved no data")
    if kind == "bw":
        return side["bw_bytes"] / 2**20
    return side["iops"]


def fmt(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    results, args = sys.argv[1], sys.argv[2:]
    extra = [args[i + 1] for i, a in enumerate(args) if a == "--ratio" and i + 1 < len(args)]
    targets = [a for i, a in enumerate(args) if a != "--ratio" and (i == 0 or args[i - 1] != "--ratio")]
    if "native" not in targets:
        raise SystemExit("report.py: target native missing")
    ratios = [(t, "native") for t in targets if t != "native"]
    for peer in ("passthrough_ll", "bindfs"):
        ratios += [(t, peer) for t in ("plugfs", "plugfs-nopt") if peer in targets and t in targets]
    for pair in extra:
        a, _, b = pair.partition("/")
        if a not in targets or b not in targets:
            raise SystemExit(f"report.py: --ratio {pair}: both must be targets")
        ratios.append((a, b))

    samples = {}  # row label -> {target: [value per round]}
    for label, job, ddir, kind in FIO_ROWS:
        if not glob.glob(os.path.join(glob.escape(results), f"{targets[0]}.{job}.*.json")):
            continue  # a workload this run did not have (older runs)
        samples[label] = {t: [fio_value(d, ddir, kind) for d in load_rounds(results, t, job)] for t in targets}
    for label, key in META_ROWS:
        samples[label] = {t: [d[key] for d in load_rounds(results, t, "meta")] for t in targets}
    values = {label: {t: statistics.median(v) for t, v in row.items()} for label, row in samples.items()}
    rounds = min(len(v) for row in samples.values() for v in row.values())
    spread, where = max(
        ((max(v) - min(v)) / statistics.median(v), f"{label}, {t}") for label, row in samples.items() for t, v in row.items()
    )

    header = ["workload"] + targets + [f"{a}/{b}" for a, b in ratios]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    for label, v in values.items():
        cells = [label] + [fmt(v[t]) for t in targets]
        cells += [f"{v[a] / v[b]:.2f}" for a, b in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    if rounds > 1:
        lines += ["", f"Median of {rounds} rounds; widest spread of a cell: {spread:.0%} ({where})."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
