#!/usr/bin/env bash
# Type-checks and lints the Windows frontends (plugfs-winfsp, plugfs-dokan), the
# Windows-only parts of plugfs-windows-core, and the plugfs host that mounts through them,
# for x86_64-pc-windows-msvc, from Linux. Nothing
# is linked or run: that needs Windows (.github/workflows/windows.yml).
#
# Where the Windows target cannot be installed (no rustup, no network), prints a SKIP line
# and succeeds, so CI says plainly that the check did not happen.
#
# Two things make the check possible off Windows (docs/windows.md):
# - plugfs-winfsp's `cross-check` feature: winfsp-sys's pre-generated bindings instead of
#   bindgen over the WinFSP headers;
# - a copy of dokan-sys with frontends/dokan/cross-check/build.rs as its build script
#   (the original compiles and runs a C program), given as a [patch] on the command line
#   only here.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-pc-windows-msvc
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    if ! rustup target add "$target"; then
        echo "SKIP: the $target target could not be installed; the Windows frontends were not type-checked"
        exit 0
    fi
fi

# The patch changes how Cargo.lock resolves dokan-sys; keep the checked-in lock as it is.
cp Cargo.lock target/.Cargo.lock.before-windows-check 2>/dev/null || { mkdir -p target && cp Cargo.lock target/.Cargo.lock.before-windows-check; }
trap 'cp target/.Cargo.lock.before-windows-check Cargo.lock' EXIT

manifest=$(cargo metadata --format-version 1 --filter-platform "$target" |
    grep -o '"manifest_path":"[^"]*/dokan-sys-[^"/]*/Cargo.toml"' | head -1 | cut -d'"' -f4)
[ -n "$manifest" ] || { echo "check-windows: dokan-sys is not in the dependency graph" >&2; exit 1; }
patched=target/cross-check/dokan-sys
rm -rf "$patched"
mkdir -p "$(dirname "$patched")"
cp -r "$(dirname "$manifest")" "$patched"
cp frontends/dokan/cross-check/build.rs "$patched/build.rs"
# Its code is upstream's: lints there are not ours to fix (a registry crate's would be capped).
sed -i '1i #![allow(warnings)]' "$patched/src/lib.rs"

cargo clippy --target "$target" --all-targets \
    -p plugfs-windows-core -p plugfs-winfsp -p plugfs-dokan -p plugfs \
    --features plugfs-winfsp/cross-check,plugfs/winfsp-cross-check \
    --config "patch.crates-io.dokan-sys.path=\"$patched\"" \
    -- -D warnings
# The default Windows build of the host: Dokan only (WinFSP's GPL feature off).
cargo clippy --target "$target" --all-targets -p plugfs \
    --config "patch.crates-io.dokan-sys.path=\"$patched\"" \
    -- -D warnings
echo "check-windows: plugfs, plugfs-winfsp, plugfs-dokan and plugfs-windows-core type-check for $target without warnings"
