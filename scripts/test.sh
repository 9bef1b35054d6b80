#!/usr/bin/env bash
# Runs every test of the workspace.
#
# The end-to-end tests load the plugin libraries (target/debug/libplugfs_*.so) and run the
# plugfs and plugfs-conformance binaries, which `cargo test` alone does not build, so the
# whole workspace is built first. They mount through the kernel with FUSE and switch to an
# unprivileged user for the permission checks, so run this as root, with fusermount3
# installed (Debian: apt-get install fuse3). The crash tests put an ext4 image in a loop
# device (losetup, mkfs.ext4, e2fsck). The s3 tests start moto (scripts/setup-s3-test-server.sh
# installs it in target/moto-venv, which needs python3 with venv and pip).
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p plugfs-tests -- host).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the FUSE and permission tests need root" >&2
    exit 1
fi
command -v fusermount3 >/dev/null || { echo "scripts/test.sh: fusermount3 missing (apt-get install fuse3)" >&2; exit 1; }
# The s3 plugin's tests run against moto, a real S3 server, from a venv under target/.
# Installs it on first use (from PyPI); fails with what to install if python3 cannot.
scripts/setup-s3-test-server.sh || {
    echo "scripts/test.sh: the S3 test server could not be installed (see above); the s3 tests need it" >&2
    exit 1
}

cargo build --workspace --all-targets

# cargo prints one "test result" line per test binary; the last is often a crate's empty
# doc tests. Keep the output as it is and end with one line that totals them all.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
