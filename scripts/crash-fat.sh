#!/usr/bin/env bash
# Long crash-cut runs for the fat plugin (plugins/fat/tests/crash.rs): replays many more
# cut points of the recorded workload than CI does, for several workload seeds, and
# checks that fsck.fat repairs every cut image with every synced file intact; the same for
# the concurrent workload (3 writers and a namespace thread; its interleaving differs from
# run to run, so repeated runs of one seed test different records).
#
#   scripts/crash-fat.sh                         # every cut point, seeds 1..3
#   CRASH_CUTS=500 CRASH_SEEDS="7 8 9" scripts/crash-fat.sh
#
# CRASH_CUTS: cut points per FAT type and seed (default: all of them, with a torn variant
# of each large write). CRASH_SEEDS: workload seeds. CRASH_KEEP: a directory to keep
# failing cut images of the concurrent workload in. Needs dosfstools and mtools.
set -euo pipefail
cd "$(dirname "$0")/.."
cuts="${CRASH_CUTS:-1000000}"
seeds="${CRASH_SEEDS:-1 2 3}"
lock=()
[ -e /tmp/plugfs-helper-build.lock ] && lock=(flock /tmp/plugfs-helper-build.lock)
if [ -n "${CRASH_KEEP:-}" ]; then export PLUGFS_FAT_CRASH_KEEP="$CRASH_KEEP"; fi
"${lock[@]}" cargo test --release -p plugfs-fat --test crash --no-run
for seed in $seeds; do
    echo "== seed $seed, up to $cuts cut points per FAT type"
    PLUGFS_FAT_CRASH_CUTS="$cuts" PLUGFS_FAT_CRASH_MT_CUTS="$cuts" PLUGFS_FAT_CRASH_SEED="$seed" \
        cargo test --release -p plugfs-fat --test crash -- --nocapture --test-threads=2
done
