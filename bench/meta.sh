#!/usr/bin/env bash
# bench/meta.sh: the metadata rows of bench/run.sh (create, stat, unlink of N files with
# bench/meta.py) on a tmpfs, for the native directory, plugfs + durable-io with
# `exclusive = true` (plugfs-excl), the same with the mount option default_permissions =
# false (plugfs-excl-nodp: durable-io checks as each caller, so the kernel need not fetch
# the parent directory's attributes after every change), plugfs + durable-io by default
# (plugfs, 1 s TTLs), and libfuse's passthrough_ll, in one run. Both plugfs mounts use durability = "kernel", as
# run.sh does. Two tables: cold (caches dropped before each phase, run.sh's rows) and warm
# (no drop: what the kernel's entry, attribute and negative-entry caches save).
#
# Usage (as root): bench/meta.sh [--no-build] [--files N] [--repeat N] [--perf TARGET]
#                  [--requests] [--no-record]
#
#   --no-build      use the existing target/release build
#   --files N       files per phase (default 10000)
#   --repeat N      rounds, each starting with the next target; cells are medians (default 3)
#   --perf TARGET   after the rounds, one more cold run on TARGET (plugfs or plugfs-excl)
#                   under `perf record -g` of the plugfs host; the report goes to
#                   $run/perf-TARGET.txt and the script prints where it is
#   --requests      after the rounds, one more cold and one warm run per FUSE target under
#                   `perf record -e fuse:fuse_request_send`: FUSE requests per file, by kind
#   --no-record     do not append the tables to bench/RESULTS.md
set -euo pipefail

bench=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench/.." && pwd)
build=1 files=10000 repeat=3 perf_target= record=1 requests=0
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --files) files=$2; shift ;;
        --repeat) repeat=$2; shift ;;
        --perf) perf_target=$2; shift ;;
        --requests) requests=1 ;;
        --no-record) record=0 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "meta.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "meta.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (it drops the page cache and mounts a tmpfs)"
busy="load $(cut -d' ' -f1-3 /proc/loadavg)"
examples=/usr/share/doc/libfuse3-dev/examples
[[ -e $examples/passthrough_ll.c ]] || die "needs libfuse3-dev (passthrough_ll.c)"

release="${CARGO_TARGET_DIR:-$repo/target}/release"
if ((build)); then (cd "$repo" && cargo build --release --workspace); fi
plugfs="$release/plugfs"
[[ -x $plugfs && -e $release/libplugfs_durable_io.so ]] || die "no release build in $release"

run=$(mktemp -d /tmp/plugfs-meta.XXXXXX)
mount -t tmpfs -o size=50% plugfs-meta "$run"
mkdir -p "$run/results/cold" "$run/results/warm" "$run/native" "$run/ll/src" "$run/ll/mnt" "$run/bin"
cc -O2 -Wall -o "$run/bin/passthrough_ll" "$examples/passthrough_ll.c" -I"$examples" \
    $(pkg-config --cflags --libs fuse3) -lpthread

plugfs_pid= peer_pid=
cleanup() {
    local rc=$?
    [[ -n $plugfs_pid ]] && kill -TERM "$plugfs_pid" 2>/dev/null && wait "$plugfs_pid" 2>/dev/null
    for m in "$run/plugfs/mnt" "$run/plugfs-excl/mnt" "$run/plugfs-excl-nodp/mnt" "$run/ll/mnt"; do
        findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
    done
    [[ -n $peer_pid ]] && wait "$peer_pid" 2>/dev/null
    cp -r "$run/results" "/tmp/plugfs-meta-results-last" 2>/dev/null || true
    cp "$run"/perf-*.txt /tmp/ 2>/dev/null || true
    umount "$run" 2>/dev/null || umount -l "$run"
    rmdir "$run"
    exit "$rc"
}
trap cleanup EXIT

mount_table() { # name, extra config lines, extra option lines
    printf '\n[[mount]]\nname = "%s"\nplugin = "durable-io"\nmountpoint = "%s/mnt"\ncreate_mountpoint = true\n' "$1" "$1"
    printf '[mount.options]\nauto_unmount = true\n%s\n' "${3:-}"
    printf '[mount.config]\nroot = "%s/data"\ncreate_root = true\ndurability = "kernel"\n%s\n' "$1" "${2:-}"
}
{
    printf '[host]\nplugin_dirs = ["%s"]\nlog = "info"\n' "$release"
    mount_table plugfs
    mount_table plugfs-excl "exclusive = true"
    mount_table plugfs-excl-nodp "exclusive = true" "default_permissions = false"
} >"$run/plugfs.toml"
"$plugfs" mount --config "$run/plugfs.toml" 2>"$run/plugfs.log" &
plugfs_pid=$!
"$run/bin/passthrough_ll" -f -o source="$run/ll/src" "$run/ll/mnt" 2>"$run/ll.log" &
peer_pid=$!
for m in "$run/plugfs/mnt" "$run/plugfs-excl/mnt" "$run/plugfs-excl-nodp/mnt" "$run/ll/mnt"; do
    for _ in $(seq 100); do findmnt -rn --mountpoint "$m" >/dev/null && break; sleep 0.1; done
    findmnt -rn --mountpoint "$m" >/dev/null || { cat "$run"/*.log >&2; die "$m did not mount"; }
done

targets=(native plugfs-excl plugfs-excl-nodp plugfs passthrough_ll)
path_of() {
    case $1 in
        native) echo "$run/native" ;;
        plugfs) echo "$run/plugfs/mnt" ;;
        plugfs-excl) echo "$run/plugfs-excl/mnt" ;;
        plugfs-excl-nodp) echo "$run/plugfs-excl-nodp/mnt" ;;
        passthrough_ll) echo "$run/ll/mnt" ;;
    esac
}
rotated() { local n=${#targets[@]} i; for ((i = 0; i < n; i++)); do echo "${targets[(i + $1) % n]}"; done; }

for ((r = 0; r < repeat; r++)); do
    log "round $((r + 1))/$repeat: create, stat, unlink $files files, cold and warm"
    for t in $(rotated $r); do
        python3 "$bench/meta.py" --drop-caches "$(path_of "$t")" "$files" >"$run/results/cold/$t.meta.$r.json"
        python3 "$bench/meta.py" "$(path_of "$t")" "$files" >"$run/results/warm/$t.meta.$r.json"
    done
done

if [[ -n $perf_target ]]; then
    log "perf record -g of the plugfs host during a cold run on $perf_target"
    perf record -g -F 2000 -p "$plugfs_pid" -o "$run/perf.data" -- \
        python3 "$bench/meta.py" --drop-caches "$(path_of "$perf_target")" "$files" >"$run/perf-run.json" 2>/dev/null
    perf report -i "$run/perf.data" --no-children --sort dso,sym --percent-limit 0.5 --stdio \
        >"$run/perf-$perf_target.txt" 2>/dev/null
    perf report -i "$run/perf.data" --children --sort sym --percent-limit 2 --stdio -g none \
        >"$run/perf-$perf_target.children.txt" 2>/dev/null
    perf report -i "$run/perf.data" --no-children --sort dso --stdio -g none \
        >"$run/perf-$perf_target.dso.txt" 2>/dev/null
    cp "$run/perf.data" "/tmp/perf-$perf_target.data"
    log "perf reports: /tmp/perf-$perf_target.txt and /tmp/perf-$perf_target.children.txt (cold run: $(cat "$run/perf-run.json"))"
fi

counts=
if ((requests)); then
    log "FUSE requests per file, by kind (perf record -e fuse:fuse_request_send)"
    for t in plugfs-excl plugfs-excl-nodp plugfs passthrough_ll; do
        for mode in cold warm; do
            flag=; [[ $mode == cold ]] && flag=--drop-caches
            perf record -q -e fuse:fuse_request_send -a -o "$run/req.data" -- \
                python3 "$bench/meta.py" $flag "$(path_of "$t")" "$files" >/dev/null 2>&1
            line=$(perf script -i "$run/req.data" 2>/dev/null | grep -o '(FUSE_[A-Z_]*)' | tr -d '()' | sort | uniq -c |
                awk -v n="$files" '$1 >= n / 2 { total += $1; printf "%s %.1f, ", substr($2, 6), $1 / n } END { printf "total %.1f", total / n }')
            counts+="| $t | $mode | $line |"$'\n'
        done
    done
    counts="| target | caches | requests per file (create + stat + unlink) |"$'\n'"| --- | --- | --- |"$'\n'"$counts"
    printf '\n%s\n' "$counts"
fi

ratios=(--ratio plugfs-excl/passthrough_ll --ratio plugfs-excl-nodp/passthrough_ll --ratio plugfs-excl/plugfs)
cold=$(python3 "$bench/report.py" "$run/results/cold" "${targets[@]}" "${ratios[@]}")
warm=$(python3 "$bench/report.py" "$run/results/warm" "${targets[@]}" "${ratios[@]}")
printf '\nCold (caches dropped before each phase):\n\n%s\n\nWarm:\n\n%s\n' "$cold" "$warm"
if ((record)); then
    commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    {
        echo "## metadata, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
        echo
        echo "\`bench/meta.sh --files $files --repeat $repeat\`: kernel $(uname -r), $(nproc) cores, tmpfs; at start: $busy."
        echo "plugfs, plugfs-excl, plugfs-excl-nodp: durable-io with durability = \"kernel\"; the last two with"
        echo "exclusive = true, the last also with the mount option default_permissions = false;"
        echo "passthrough_ll from libfuse $(pkg-config --modversion fuse3)'s examples, default options."
        echo
        echo "Cold (caches dropped before each phase, as bench/run.sh's rows):"
        echo
        echo "$cold"
        echo
        echo "Warm (no drop; the create phase's entries are still cached):"
        echo
        echo "$warm"
        echo
        if [[ -n $counts ]]; then echo "$counts"; echo; fi
    } >>"$bench/RESULTS.md"
    log "appended to $bench/RESULTS.md"
fi
