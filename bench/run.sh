#!/usr/bin/env bash
# bench/run.sh: measure plugfs + durable-io against the native directory, libfuse's
# passthrough_ll and bindfs.
#
# Usage (as root, from anywhere):
#   bench/run.sh [--no-build] [--dir DIR] [--tmpfs] [--size SIZE] [--files N] [--runtime SECS]
#                [--repeat N] [--close] [--no-bindfs] [--keep] [--no-record]
#
#   --no-build      use the existing target/release build instead of `cargo build --release`
#   --dir DIR       scratch directory on a disk filesystem (default: bench/work); never tmpfs
#   --tmpfs         put the scratch data on a tmpfs mounted for the run under DIR instead:
#                   numbers without the disk, whose speed varies fivefold on shared VMs
#   --size SIZE     fio file size per target, fio syntax (default: 1G)
#   --files N       files for the create/stat/unlink test (default: 10000)
#   --runtime SECS  time cap for each fio read job (default: 10)
#   --repeat N      run every workload N times and report the median (default: 3)
#   --close         also measure a second plugfs mount with durability = "close"
#   --no-bindfs     leave bindfs out
#   --keep          keep the scratch data (test files) after the run
#   --no-record     print the table but do not append the run to bench/RESULTS.md
#
# Targets on the same filesystem, measured in the same run: the native directory, plugfs
# serving a directory through durable-io (durability = "kernel") with kernel passthrough
# (plugfs) and without (plugfs-nopt), libfuse's passthrough_ll example (built from the C
# source Debian's libfuse3-dev ships, into a temporary directory), and bindfs over a
# directory. Each workload runs on every target before the next workload starts, so slow
# drift on a shared machine spreads over all targets; with --repeat, each round starts with
# the next target in turn. Installs fio and bindfs with apt-get
# when they are missing. See bench/README.md for what the numbers mean.
set -euo pipefail

bench=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bench/.." && pwd)

build=1 dir="$bench/work" size=1G files=10000 runtime=10 repeat=3 close=0 keep=0 record=1 tmpfs=0 bindfs=1
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --dir) dir=$2; shift ;;
        --size) size=$2; shift ;;
        --files) files=$2; shift ;;
        --runtime) runtime=$2; shift ;;
        --repeat) repeat=$2; shift ;;
        --close) close=1 ;;
        --tmpfs) tmpfs=1 ;;
        --no-bindfs) bindfs=0 ;;
        --keep) keep=1 ;;
        --no-record) record=0 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[[ $repeat =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --repeat wants a positive number" >&2; exit 2; }

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it drops the page cache and may install packages)"
busy="$(pgrep -c rustc || true) rustc processes, load $(cut -d' ' -f1-3 /proc/loadavg)"

# --- tools -----------------------------------------------------------------------------------
need=()
command -v fio >/dev/null || need+=(fio)
if ((bindfs)); then command -v bindfs >/dev/null || need+=(bindfs); fi
command -v fusermount3 >/dev/null || need+=(fuse3)
examples=/usr/share/doc/libfuse3-dev/examples
[[ -e $examples/passthrough_ll.c ]] || need+=(libfuse3-dev)
command -v cc >/dev/null || need+=(gcc)
command -v pkg-config >/dev/null || need+=(pkg-config)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is needed"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"

# --- build -----------------------------------------------------------------------------------
release="${CARGO_TARGET_DIR:-$repo/target}/release"
if ((build)); then
    log "cargo build --release --workspace"
    (cd "$repo" && cargo build --release --workspace)
fi
plugfs="$release/plugfs"
[[ -x $plugfs && -e $release/libplugfs_durable_io.so ]] ||
    die "no release build in $release (run without --no-build)"

# --- scratch directory -----------------------------------------------------------------------
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
fstype=$(stat -f -c %T "$dir")
case $fstype in
    tmpfs | ramfs | fuse*) die "$dir is on $fstype; use --dir on a disk filesystem" ;;
    overlayfs) echo "run.sh: warning: $dir is on overlayfs; native numbers include its cost" >&2 ;;
esac
run="$dir/run"
# A previous run that was killed hard may have left mounts behind.
for m in "$run"/*/mnt; do
    findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" || umount -l "$m"; }
done
findmnt -rn --mountpoint "$run" >/dev/null 2>&1 && umount "$run"
rm -rf "$run"
mkdir -p "$run"
if ((tmpfs)); then
    mount -t tmpfs -o size=75% plugfs-bench "$run"
    fstype=tmpfs
fi
mkdir -p "$run/results"
results="$run/results"

# libfuse's passthrough_ll, built from the example source for this run only.
peer_dir=$(mktemp -d)
log "building passthrough_ll from $examples/passthrough_ll.c (libfuse $(pkg-config --modversion fuse3))"
cc -O2 -Wall -o "$peer_dir/passthrough_ll" "$examples/passthrough_ll.c" -I"$examples" \
    $(pkg-config --cflags --libs fuse3) -lpthread

native="$run/native/dir"
plugfs_mnt="$run/plugfs/mnt" plugfs_close_mnt="$run/plugfs-close/mnt" plugfs_nopt_mnt="$run/plugfs-nopt/mnt"
bindfs_mnt="$run/bindfs/mnt" peer_mnt="$run/passthrough_ll/mnt"
mkdir -p "$native" "$run/bindfs/src" "$bindfs_mnt" "$run/passthrough_ll/src" "$peer_mnt"

# --- mounts, and their cleanup ---------------------------------------------------------------
plugfs_pid= bindfs_pid= peer_pid=
cleanup() {
    local rc=$?
    if [[ -n $plugfs_pid ]] && kill -0 "$plugfs_pid" 2>/dev/null; then
        kill -TERM "$plugfs_pid"
        for _ in $(seq 100); do kill -0 "$plugfs_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$plugfs_pid" 2>/dev/null && { echo "plugfs ignored SIGTERM; killing it" >&2; kill -KILL "$plugfs_pid"; }
        wait "$plugfs_pid" 2>/dev/null || true
    fi
    for m in "$plugfs_mnt" "$plugfs_close_mnt" "$plugfs_nopt_mnt" "$bindfs_mnt" "$peer_mnt"; do
        if findmnt -rn --mountpoint "$m" >/dev/null 2>&1; then
            fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" || true
        fi
    done
    if [[ -n $bindfs_pid ]]; then wait "$bindfs_pid" 2>/dev/null || true; fi
    if [[ -n $peer_pid ]]; then wait "$peer_pid" 2>/dev/null || true; fi
    rm -rf "$peer_dir"
    if ((!keep)); then
        rm -rf "$run/native" "$run/plugfs" "$run/plugfs-close" "$run/plugfs-nopt" "$run/bindfs" "$run/passthrough_ll"
    fi
    if ((tmpfs)); then
        cp -r "$results" "$dir/results-last" 2>/dev/null || true
        umount "$run" 2>/dev/null || umount -l "$run" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_mounted() { # mountpoint, what, log file
    for _ in $(seq 200); do
        findmnt -rn --mountpoint "$1" >/dev/null && return 0
        [[ $2 == plugfs ]] && ! kill -0 "$plugfs_pid" 2>/dev/null && break
        [[ $2 == bindfs ]] && ! kill -0 "$bindfs_pid" 2>/dev/null && break
        [[ $2 == passthrough_ll ]] && ! kill -0 "$peer_pid" 2>/dev/null && break
        sleep 0.1
    done
    cat "$3" >&2 2>/dev/null || true
    die "$2 did not mount $1"
}

config="$run/plugfs.toml"
mount_table() { # name, durability, extra [mount.options] lines
    cat <<EOF

[[mount]]
name = "$1"
plugin = "durable-io"
mountpoint = "$1/mnt"
create_mountpoint = true

[mount.options]
allow_other = false
auto_unmount = true
${3:-}

[mount.config]
root = "$1/data"
create_root = true
durability = "$2"
EOF
}
{
    printf '# Generated by bench/run.sh.\n[host]\nplugin_dirs = ["%s"]\nlog = "info"\n' "$release"
    mount_table plugfs kernel
    mount_table plugfs-nopt kernel "passthrough = false"
    if ((close)); then mount_table plugfs-close close; fi
} >"$config"

log "mounting plugfs ($config)"
"$plugfs" mount --config "$config" 2>"$run/plugfs.log" &
plugfs_pid=$!
wait_mounted "$plugfs_mnt" plugfs "$run/plugfs.log"
wait_mounted "$plugfs_nopt_mnt" plugfs "$run/plugfs.log"
if ((close)); then wait_mounted "$plugfs_close_mnt" plugfs "$run/plugfs.log"; fi

# bindfs is built on libfuse 2, whose default is 4 KiB writes; big_writes gives it 128 KiB
# writes like any tuned libfuse 2 passthrough (plugfs asks for 1 MiB).
bindfs_opts=(--no-allow-other -o big_writes)
if ((bindfs)); then
    log "mounting bindfs ${bindfs_opts[*]}"
    # In the foreground (-f) as our child, so that cleanup can wait for it.
    bindfs -f "${bindfs_opts[@]}" "$run/bindfs/src" "$bindfs_mnt" 2>"$run/bindfs.log" &
    bindfs_pid=$!
    wait_mounted "$bindfs_mnt" bindfs "$run/bindfs.log"
fi

# passthrough_ll with its defaults (multi-threaded, cache=auto-like 1 s timeouts).
log "mounting passthrough_ll"
"$peer_dir/passthrough_ll" -f -o source="$run/passthrough_ll/src" "$peer_mnt" 2>"$run/passthrough_ll.log" &
peer_pid=$!
wait_mounted "$peer_mnt" passthrough_ll "$run/passthrough_ll.log"

targets=(native plugfs plugfs-nopt)
if ((close)); then targets+=(plugfs-close); fi
targets+=(passthrough_ll)
if ((bindfs)); then targets+=(bindfs); fi
path_of() {
    case $1 in
        native) echo "$native" ;;
        plugfs) echo "$plugfs_mnt" ;;
        plugfs-nopt) echo "$plugfs_nopt_mnt" ;;
        plugfs-close) echo "$plugfs_close_mnt" ;;
        passthrough_ll) echo "$peer_mnt" ;;
        bindfs) echo "$bindfs_mnt" ;;
    esac
}
# --- workloads -------------------------------------------------------------------------------
# drop_caches, fio_job, fio_jobs4 and rotated: shared with bench/wfs.sh.
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
    log "$round: seq write, 4 jobs, $size each in 1 MiB blocks, end_fsync"
    for t in $(rotated $r); do
        rm -f "$(path_of "$t")"/fio4.*.dat
        fio_jobs4 "$t" seqwrite4 $r --rw=write --bs=1M --size="$size" --end_fsync=1
    done
    log "$round: seq read, 4 jobs, 1 MiB blocks, cold cache, at most ${runtime}s"
    for t in $(rotated $r); do
        fio_jobs4 "$t" seqread4 $r --rw=read --bs=1M --size="$size" --readonly --runtime="$runtime"
        rm -f "$(path_of "$t")"/fio4.*.dat
    done
    log "$round: random read, 4 KiB blocks, cold cache, at most ${runtime}s"
    for t in $(rotated $r); do
        fio_job "$t" randread $r --rw=randread --bs=4k --size="$size" --readonly --runtime="$runtime"
    done
    log "$round: metadata: create, stat, unlink $files files, cold cache before each phase"
    for t in $(rotated $r); do
        python3 "$bench/meta.py" --drop-caches "$(path_of "$t")" "$files" >"$results/$t.meta.$r.json"
    done
done
for t in "${targets[@]}"; do rm -f "$(path_of "$t")/fio.dat"; done

# --- report ----------------------------------------------------------------------------------
table=$(python3 "$bench/report.py" "$results" "${targets[@]}")
echo
echo "$table"

if ((record)); then
    commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [[ -n $(git -C "$repo" status --porcelain -- . ':!bench' 2>/dev/null) ]] && commit+=" (with uncommitted changes)"
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    results_md="$bench/RESULTS.md"
    [[ -e $results_md ]] || cat >"$results_md" <<'EOF'
# plugfs benchmark results

Each entry below was appended by `bench/run.sh` (see `bench/README.md`). All numbers of an
entry come from one run on one machine: the native directory, plugfs + durable-io
(`durability = "kernel"`; `plugfs-close` is `durability = "close"`, with `--close`) and
bindfs, all backed by the same disk filesystem, one workload on every target before the next
workload. The sequence runs `--repeat` rounds, each starting with the next target, and each
cell is the median of the rounds; the line under a table is that run's worst spread.

Method, in short: fio with buffered IO (`--direct=0`, `psync`, one job). Sequential write of
the whole file in 1 MiB blocks with `end_fsync=1` (the final fsync counts in the time);
sequential read in 1 MiB blocks and random read in 4 KiB blocks, each from a cold page cache
(`sync; echo 3 > /proc/sys/vm/drop_caches` before every job) with a time cap. Metadata:
`bench/meta.py` creates, stats and unlinks N empty files in one directory and reports ops/s
per phase. Every number is higher-is-better; a ratio below 1 means plugfs is slower.

Caveat: these machines are shared VMs with 2 cores, often running builds at the same time;
differences of 10-20 % between runs are noise. Compare the columns of one entry, not
entries with each other, unless the machine is known to be the same and idle.

Reproduce: as root, `bench/run.sh` (`--help` for the options; `--repeat`, `--size`,
`--files` and `--runtime` are recorded with each entry).

EOF
    {
        echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
        echo
        echo "- kernel $(uname -r); CPU $cpu, $(nproc) cores; RAM $(free -g | awk '/^Mem:/{print $2}') GiB"
        if ((tmpfs)); then scratch="a tmpfs mounted for the run"; else
            scratch="$(findmnt -n -o FSTYPE -T "$dir") ($(findmnt -n -o SOURCE -T "$dir"))"; fi
        peers="passthrough_ll from libfuse $(pkg-config --modversion fuse3)'s examples, default options"
        ((bindfs)) && peers+="; bindfs $(bindfs --version | awk '{print $2; exit}') \`${bindfs_opts[*]}\`"
        echo "- scratch on $scratch; $(fio --version); $peers"
        echo "- --repeat $repeat; --size $size --files $files --runtime $runtime; at start: $busy"
        echo
        echo "$table"
        echo
    } >>"$results_md"
    log "appended to $results_md"
fi
