#!/usr/bin/env bash
# Fuzzes the fat engine's parsers with cargo-fuzz (libFuzzer): the boot sector, directory
# entries, whole images (mounted read-only and walked), and whole images mounted
# read-write and changed (image_rw). Each target runs for
# FUZZ_SECONDS seconds (default 60); crashes land in plugins/fat/fuzz/artifacts/TARGET/.
#
#   scripts/fuzz-fat.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz-fat.sh image
#
# cargo-fuzz needs nightly compiler features (-Zsanitizer). With only stable Rust installed,
# RUSTC_BOOTSTRAP=1 unlocks them, which is what this script does (set FUZZ_TOOLCHAIN=nightly
# to use a nightly toolchain from rustup instead). cargo-fuzz is installed with
# `cargo install cargo-fuzz` if missing. The seed corpus is made from real images by
# mkfs.fat and mtools (needs dosfstools and mtools).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/plugins/fat/fuzz"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(boot_sector directory image image_rw)
build=(env)
[ -n "${CARGO_BUILD_JOBS:-}" ] && build+=(CARGO_BUILD_JOBS="$CARGO_BUILD_JOBS")
lock=()
# On the shared build machines every build goes through this lock.
[ -e /tmp/plugfs-helper-build.lock ] && lock=(flock /tmp/plugfs-helper-build.lock)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    "${lock[@]}" cargo install --locked cargo-fuzz
fi
for t in mkfs.fat mcopy; do
    command -v "$t" >/dev/null || { echo "scripts/fuzz-fat.sh: $t missing (apt-get install dosfstools mtools)" >&2; exit 1; }
done

if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
    cargo=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo fuzz)
fi

# Seeds: small real images (FAT12 floppy-sized, with files, a directory and long names),
# their boot sectors and their root directories.
seeds="$fuzz/corpus"
if [ ! -d "$seeds/image" ]; then
    echo "== making the seed corpus"
    mkdir -p "$seeds/image" "$seeds/boot_sector" "$seeds/directory"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/src/Sub Directory"
    echo hello >"$tmp/src/readme.txt"
    head -c 3000 /dev/urandom >"$tmp/src/A long file name.bin"
    echo inner >"$tmp/src/Sub Directory/Ünïcödé name.txt"
    # FAT type, KiB, sectors per cluster.
    for spec in "12 160 1" "12 360 2" "16 4200 1"; do
        set -- $spec
        img="$tmp/fat$1-$2.img"
        mkfs.fat -F "$1" -s "$3" -C "$img" "$2" >/dev/null
        MTOOLS_SKIP_CHECK=1 LC_ALL=C.UTF-8 mcopy -s -i "$img" "$tmp/src/readme.txt" "$tmp/src/A long file name.bin" "$tmp/src/Sub Directory" ::/
        # Images are cut after their first data clusters: the engine mounts short images.
        read -r root data < <(python3 -c "
import struct
b = open('$img', 'rb').read(64)
bs, spc, rs, nf, re = struct.unpack_from('<HBHBH', b, 11)
spf = struct.unpack_from('<H', b, 22)[0]
root = bs * (rs + nf * spf)
print(root, root + re * 32)")
        dd if="$img" of="$seeds/image/fat$1-$2" iflag=count_bytes count=$(( data + 16384 )) status=none
        dd if="$img" of="$seeds/boot_sector/fat$1-$2" iflag=count_bytes count=512 status=none
        dd if="$img" of="$seeds/directory/root-fat$1-$2" iflag=skip_bytes,count_bytes skip="$root" count=$(( data - root )) status=none
    done
fi
# The read-write target starts from the same images (also in a corpus made before it existed).
[ -d "$seeds/image_rw" ] || cp -r "$seeds/image" "$seeds/image_rw"

cd "$fuzz"
for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    "${build[@]}" "${lock[@]}" "${cargo[@]}" build "$t"
    "${cargo[@]}" run "$t" "corpus/$t" -- -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048
done
echo "== no crashes"
