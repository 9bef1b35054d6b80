#!/usr/bin/env bash
# bench/wfs.sh: wfs through plugfs against RedoxFS (the best peer: a copy-on-write
# filesystem in an image file, in Rust, served through FUSE too) and the native directory,
# in one run on one machine.
#
#   bench/wfs.sh [--no-build] [--size 1G] [--files 10000] [--runtime 10] [--repeat 3]
#                [--dir DIR] [--record]
#
# Targets, all on the same disk filesystem (DIR, default bench/work):
#   native   a plain directory
#   wfs      target/release/plugfs with the wfs plugin over an image made by
#            `plugfs-wfs mkfs`, default options
#   redoxfs  RedoxFS over an image made by `redoxfs-mkfs` (cargo install redoxfs, pinned
#            version, into DIR/redoxfs unless `redoxfs` is on PATH), default options
# Both images are sparse files of the same size (twice SIZE plus 1 GiB).
#
# Workloads, as bench/run.sh runs them (bench/README.md): fio seq write 1 MiB with
# end_fsync, seq read 1 MiB and rand read 4 KiB from a cold page cache (capped at RUNTIME
# seconds), rand write 4 KiB into the file (capped at RUNTIME seconds, end_fsync), and
# bench/meta.py create/stat/unlink of FILES empty files, every phase cold.
# Each workload runs on every target before the next; REPEAT rounds, each starting with
# the next target; the table shows medians and the columns wfs/native, redoxfs/native and
# wfs/redoxfs.
#
# As root (drops caches, mounts). Installs fio (apt) and, for building RedoxFS,
# libfuse3-dev and pkg-config if missing. With --record appends the table to
# bench/RESULTS.md. The raw results of every round (fio JSON, meta.py output) stay in
# DIR/wfs-last-results, for a look at a cell with a wide spread.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bench="$repo/bench"
build=1 size=1G files=10000 runtime=10 repeat=3 dir="$bench/work" record=0
redoxfs_version=0.9.1
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --size) size=$2; shift ;;
        --files) files=$2; shift ;;
        --runtime) runtime=$2; shift ;;
        --repeat) repeat=$2; shift ;;
        --dir) dir=$2; shift ;;
        --record) record=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/wfs.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "bench/wfs.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[[ $(id -u) == 0 ]] || die "run as root (drops caches, mounts)"
command -v fusermount3 >/dev/null || die "fusermount3 missing (apt-get install fuse3)"

need=()
command -v fio >/dev/null || need+=(fio)
if ! command -v redoxfs >/dev/null && [[ ! -x $dir/redoxfs/bin/redoxfs ]]; then
    pkg-config --exists fuse3 2>/dev/null || need+=(libfuse3-dev pkg-config)
fi
if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
case $(stat -f -c %T "$dir") in tmpfs | ramfs | fuse*) die "$dir is not on a disk filesystem; use --dir" ;; esac

if command -v redoxfs >/dev/null; then
    redoxfs_bin=$(dirname "$(command -v redoxfs)")
else
    redoxfs_bin="$dir/redoxfs/bin"
    if [[ ! -x $redoxfs_bin/redoxfs ]]; then
        log "cargo install redoxfs $redoxfs_version (once, into $dir/redoxfs)"
        cargo install --locked --quiet redoxfs --version "$redoxfs_version" --root "$dir/redoxfs"
    fi
fi

release="${CARGO_TARGET_DIR:-$repo/target}/release"
if ((build)); then
    log "cargo build --release -p plugfs -p plugfs-wfs"
    (cd "$repo" && cargo build --release -p plugfs -p plugfs-wfs)
fi
[[ -x $release/plugfs && -x $release/plugfs-wfs && -e $release/libplugfs_wfs.so ]] ||
    die "no release build in $release (run without --no-build)"

run="$dir/wfs-bench"
for m in "$run/wfs/mnt" "$run/redoxfs/mnt"; do
    findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" || umount -l "$m"; }
done
rm -rf "$run"
mkdir -p "$run/native" "$run/wfs/mnt" "$run/redoxfs/mnt" "$run/results"
results="$run/results"

plugfs_pid= redoxfs_pid=
cleanup() {
    local rc=$?
    for p in $plugfs_pid $redoxfs_pid; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $plugfs_pid $redoxfs_pid; do wait "$p" 2>/dev/null || true; done
    for m in "$run/wfs/mnt" "$run/redoxfs/mnt"; do
        findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
    done
    if [[ -d $run/results ]]; then
        rm -rf "$dir/wfs-last-results"
        mv "$run/results" "$dir/wfs-last-results"
    fi
    rm -rf "$run"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_mounted() { # mountpoint, pid, log file
    for _ in $(seq 300); do
        findmnt -rn --mountpoint "$1" >/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    cat "$3" >&2 2>/dev/null || true
    die "nothing mounted at $1"
}

bytes=$(python3 -c "
s='$size'; m={'K':1<<10,'M':1<<20,'G':1<<30}
print(int(s[:-1])*m[s[-1].upper()] if s[-1].upper() in m else int(s))")
image_mib=$((bytes * 2 / 1048576 + 1024))

log "wfs: plugfs-wfs mkfs ${image_mib} MiB"
"$release/plugfs-wfs" mkfs "$run/wfs/wfs.img" --size "${image_mib}M" >/dev/null
cat >"$run/wfs/plugfs.toml" <<EOT
[host]
plugin_dirs = ["$release"]
log = "warn"

[[mount]]
name = "wfs"
plugin = "wfs"
mountpoint = "mnt"

[mount.options]
auto_unmount = true

[mount.config]
image = "wfs.img"
EOT
"$release/plugfs" mount --config "$run/wfs/plugfs.toml" 2>"$run/wfs/plugfs.log" &
plugfs_pid=$!
wait_mounted "$run/wfs/mnt" "$plugfs_pid" "$run/wfs/plugfs.log"

log "redoxfs: redoxfs-mkfs ${image_mib} MiB"
truncate -s "${image_mib}M" "$run/redoxfs/redoxfs.img"
"$redoxfs_bin/redoxfs-mkfs" "$run/redoxfs/redoxfs.img" >/dev/null 2>&1
"$redoxfs_bin/redoxfs" --no-daemon "$run/redoxfs/redoxfs.img" "$run/redoxfs/mnt" 2>"$run/redoxfs/redoxfs.log" &
redoxfs_pid=$!
wait_mounted "$run/redoxfs/mnt" "$redoxfs_pid" "$run/redoxfs/redoxfs.log"

targets=(native wfs redoxfs)
path_of() {
    case $1 in
        native) echo "$run/native" ;;
        wfs) echo "$run/wfs/mnt" ;;
        redoxfs) echo "$run/redoxfs/mnt" ;;
    esac
}
# drop_caches, fio_job and rotated: shared with bench/run.sh.
source "$bench/lib.sh"

for ((r = 0; r < repeat; r++)); do
    round="round $((r + 1))/$repeat"
    log "$round: seq write, $size in 1 MiB blocks, end_fsync"
    for t in $(rotated $r); do
        rm -f "$(path_of "$t")/fio.dat"
        fio_job "$t" seqwrite $r --rw=write --bs=1M --size="$size" --end_fsync=1
    done
    log "$round: seq read, 1 MiB blocks, cold cache, at most ${runtime}s"
    for t in $(rotated $r); do
        fio_job "$t" seqread $r --rw=read --bs=1M --size="$size" --readonly --runtime="$runtime"
    done
    log "$round: random read, 4 KiB blocks, cold cache, at most ${runtime}s"
    for t in $(rotated $r); do
        fio_job "$t" randread $r --rw=randread --bs=4k --size="$size" --readonly --runtime="$runtime"
    done
    log "$round: random write, 4 KiB blocks, at most ${runtime}s, end_fsync"
    for t in $(rotated $r); do
        fio_job "$t" randwrite $r --rw=randwrite --bs=4k --size="$size" --runtime="$runtime" --end_fsync=1
    done
    log "$round: metadata: create, stat, unlink $files files, cold cache before each phase"
    for t in $(rotated $r); do
        python3 "$bench/meta.py" --drop-caches "$(path_of "$t")" "$files" >"$results/$t.meta.$r.json"
    done
done
for t in "${targets[@]}"; do rm -f "$(path_of "$t")/fio.dat"; done

table=$(python3 "$bench/report.py" "$results" "${targets[@]}" --ratio wfs/redoxfs)
echo
echo "$table"

if ((record)); then
    commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    {
        echo "## wfs vs RedoxFS, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit (bench/wfs.sh)"
        echo
        echo "- kernel $(uname -r); CPU $cpu, $(nproc) cores; RAM $(free -g | awk '/^Mem:/{print $2}') GiB"
        echo "- images on $(findmnt -n -o FSTYPE -T "$dir") ($(findmnt -n -o SOURCE -T "$dir")), ${image_mib} MiB each; RedoxFS $redoxfs_version; $(fio --version)"
        echo "- --repeat $repeat; --size $size --files $files --runtime $runtime"
        echo
        echo "$table"
        echo
    } >>"$bench/RESULTS.md"
    log "appended to $bench/RESULTS.md"
fi
