#!/usr/bin/env bash
# The long WFS crash test: replays power losses at WFS_CRASH_POINTS points (default 10000)
# of random workloads against the engine, in 100-point workloads of 120 operations each.
# Every crash image must open, pass fsck (data checksums included) and hold exactly the last
# durable commit or the one being written. WFS_CRASH_SEED picks the workloads (default 1).
#
#   WFS_CRASH_POINTS=100000 WFS_CRASH_SEED=7 scripts/crash-wfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export WFS_CRASH_POINTS="${WFS_CRASH_POINTS:-10000}"
export WFS_CRASH_SEED="${WFS_CRASH_SEED:-1}"
exec cargo test --release -p plugfs-wfs --lib power_loss_long_run -- --ignored --nocapture
