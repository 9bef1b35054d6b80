#!/usr/bin/env bash
# Fuzzes the wfs engine with cargo-fuzz (libFuzzer): whole images (fsck, open, walk; half
# of the inputs with their checksums recomputed so damage gets past them), tree nodes,
# superblocks and the snapshot table. Each target runs FUZZ_SECONDS seconds (default 60);
# crashes land in plugins/wfs/fuzz/artifacts/TARGET/.
#
#   scripts/fuzz-wfs.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz-wfs.sh image
#
# CI runs a bounded share of the same entry points on stable Rust instead
# (plugins/wfs/tests/mutated_images.rs; PLUGFS_WFS_MUTATIONS=N for more rounds).
#
# cargo-fuzz needs nightly compiler features (-Zsanitizer). With only stable Rust installed,
# RUSTC_BOOTSTRAP=1 unlocks them, which is what this script does (set FUZZ_TOOLCHAIN=nightly
# to use a nightly toolchain from rustup instead). cargo-fuzz is installed with
# `cargo install cargo-fuzz` if missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/plugins/wfs/fuzz"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image node superblock snapshots)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    cargo=(cargo "+$FUZZ_TOOLCHAIN")
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi

cd "$fuzz"
if [ ! -d corpus/image ]; then
    echo "== making the seed corpus"
    "${cargo[@]}" run --release --bin make_seeds
fi
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    "${cargo[@]}" fuzz build "$t"
    "${cargo[@]}" fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=300000 -timeout=10 -rss_limit_mb=2048
done
echo "== no crashes"
