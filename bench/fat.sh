#!/usr/bin/env bash
# bench/fat.sh: the fat plugin against mtools, in one run on one machine.
#
#   bench/fat.sh [--no-build] [--size 512M] [--files 1000] [--repeat 3] [--dir DIR] [--warm] [--record]
#
# Each of REPEAT rounds, on a fresh FAT32 image made by plugfs-fat mkfs:
#   large write:  mcopy of a SIZE file in, and cp of the same file into a plugfs mount
#   large read:   from a cold page cache, mtype of the file plugfs wrote, and cat through
#                 the mount of the file mcopy wrote (each tool reads the other's file)
#   FUSE ceiling: the same large write and read through libfuse's passthrough_ll example (C,
#                 built from Debian's libfuse3-dev for the run) over a directory on the same
#                 disk, with its defaults and with `-o writeback`: no FAT work at all, so what
#                 a FUSE daemon reaches on this machine
#   4 writers:    the SIZE file split in 4, written by 4 cp at once into the mount, and by one
#                 mcopy of the 4 files (mtools locks the image, so one after another)
#   small files:  FILES files of 1 KiB with long names into one new directory, by one mcopy
#                 and by one cp into the mount
# then fsck.fat -n, and a byte comparison of what each side wrote, read with the other.
# The table gives the median of the rounds and the widest spread of any cell.
# Writes read the source from a warm page cache and end with the data in the image file (the
# page cache), not synced, for both; a `sync` runs between phases, untimed. The mount is
# taken down between phases (mtools and plugfs lock the image), untimed too.
#
# --warm never drops the page cache (a quick check on a machine others measure on; the read
# row is then not cold).
#
# Prints a table; with --record appends it to bench/RESULTS.md with date and machine.
# As root (drops caches, mounts). plugfs is the --release build.
set -euo pipefail
shopt -s inherit_errexit # a failing timed command fails its $(...)
repo="$(cd "$(dirname "$0")/.." && pwd)"
build=1 size=512M files=1000 repeat=3 dir="$repo/bench/work" record=0 warm=0
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --size) size=$2; shift ;;
        --files) files=$2; shift ;;
        --repeat) repeat=$2; shift ;;
        --dir) dir=$2; shift ;;
        --record) record=1 ;;
        --warm) warm=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/fat.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "bench/fat.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[[ $(id -u) == 0 ]] || die "run as root (drops caches, mounts)"
((warm && record)) && die "--warm numbers are not recorded"
for t in mcopy mtype mmd mdir fsck.fat fusermount3 python3 cc pkg-config; do
    command -v $t >/dev/null || die "$t missing (apt-get install mtools dosfstools fuse3 python3 gcc pkg-config)"
done
examples=/usr/share/doc/libfuse3-dev/examples
[[ -e $examples/passthrough_ll.c ]] || die "$examples/passthrough_ll.c missing (apt-get install libfuse3-dev)"
export MTOOLS_SKIP_CHECK=1 LC_ALL=C.UTF-8

release="${CARGO_TARGET_DIR:-$repo/target}/release"
if ((build)); then
    lock=()
    [ -e /tmp/plugfs-helper-build.lock ] && lock=(flock /tmp/plugfs-helper-build.lock)
    log "cargo build --release -p plugfs -p plugfs-fat"
    (cd "$repo" && "${lock[@]}" cargo build --release -p plugfs -p plugfs-fat)
fi
[[ -x $release/plugfs && -x $release/plugfs-fat && -e $release/libplugfs_fat.so ]] ||
    die "no release build in $release (run without --no-build)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
case $(stat -f -c %T "$dir") in tmpfs | ramfs | fuse*) die "$dir is not on a disk filesystem; use --dir" ;; esac
run="$dir/fat"
mnt="$run/mnt"
for m in "$mnt" "$run/peer/mnt"; do # left behind by a run killed hard
    findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" || umount -l "$m"; }
done
rm -rf "$run"
mkdir -p "$run/src" "$mnt"
img="$run/fat.img"

# libfuse's passthrough_ll, built from the example source for this run only.
peer_dir=$(mktemp -d)
cc -O2 -Wall -o "$peer_dir/passthrough_ll" "$examples/passthrough_ll.c" -I"$examples" \
    $(pkg-config --cflags --libs fuse3) -lpthread
peer="$run/peer"
mkdir -p "$peer/src" "$peer/mnt"

pid=
unmount() {
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
    findmnt -rn --mountpoint "$mnt" >/dev/null 2>&1 && fusermount3 -u "$mnt"
    return 0
}
cleanup() {
    local rc=$?
    unmount || true
    findmnt -rn --mountpoint "$peer/mnt" >/dev/null 2>&1 && fusermount3 -u "$peer/mnt"
    rm -rf "$run" "$peer_dir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cat >"$run/plugfs.toml" <<EOT
[host]
plugin_dirs = ["$release"]
log = "warn"

[[mount]]
name = "fat"
plugin = "fat"
mountpoint = "mnt"
create_mountpoint = true

[mount.options]
auto_unmount = true

[mount.config]
image = "fat.img"
tz = "UTC"
EOT
mount_fat() {
    "$release/plugfs" mount --config "$run/plugfs.toml" 2>>"$run/plugfs.log" &
    pid=$!
    for _ in $(seq 200); do
        findmnt -rn --mountpoint "$mnt" >/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$run/plugfs.log" >&2
    die "plugfs did not mount $mnt"
}
cold() {
    sync
    ((warm)) || echo 3 >/proc/sys/vm/drop_caches
}
# Seconds (with ns precision) that "$@" takes.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.3f}')"
}

bytes=$(python3 -c "
s='$size'; m={'K':1<<10,'M':1<<20,'G':1<<30}
print(int(s[:-1])*m[s[-1].upper()] if s[-1].upper() in m else int(s))")
# The image: FAT32, big enough for two large files, two sets of parts and the small ones.
image_mib=$(( bytes * 4 / 1048576 + 256 ))
(( image_mib >= 600 )) || image_mib=600
log "sources: a ${size} file, $files small files"
head -c "$bytes" /dev/urandom >"$run/src/large.bin"
mkdir -p "$run/src/small" "$run/src/par"
split -n 4 -d --additional-suffix=.bin "$run/src/large.bin" "$run/src/par/part"
python3 - "$run/src/small" "$files" <<'EOT'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"A small file with a long name, number {i:05d}.txt"), "wb") as f:
        f.write(os.urandom(1024))
EOT
sync

warm() { cat "$run/src/large.bin" >/dev/null; }
# Appends "KEY SECONDS" to the round's timings: record KEY timed COMMAND...
record() {
    local key=$1 t
    shift
    t=$("$@") || die "$key: $* failed"
    echo "$key $t" >>"$run/times"
}
peer_mount() {
    "$peer_dir/passthrough_ll" -o source="$peer/src" "$@" "$peer/mnt" 2>>"$run/peer.log" ||
        die "passthrough_ll did not mount"
}
peer_unmount() { fusermount3 -u "$peer/mnt"; }
# Not a bare `wait`: that would wait for the plugfs host too.
par_cp() {
    local p=() f
    for f in "$run"/src/par/*; do
        cp "$f" "$mnt/par-plugfs/" &
        p+=($!)
    done
    for f in "${p[@]}"; do wait "$f" || die "a parallel cp failed"; done
}
: >"$run/times"
for ((round = 1; round <= repeat; round++)); do
    log "round $round of $repeat: image: plugfs-fat mkfs ${image_mib} MiB"
    rm -f "$img"
    "$release/plugfs-fat" mkfs "$img" --size "${image_mib}M" >/dev/null
    cold
    log "large write: mcopy"
    warm
    record mcopy_w timed mcopy -i "$img" "$run/src/large.bin" ::/mcopy.bin
    cold
    log "large write: plugfs"
    mount_fat
    warm
    record plugfs_w timed cp "$run/src/large.bin" "$mnt/plugfs.bin"
    unmount
    cold
    log "large read: mtype of the file plugfs wrote"
    record mcopy_r timed sh -c "mtype -i '$img' ::/plugfs.bin >/dev/null"
    cold
    log "large read: plugfs, of the file mcopy wrote"
    mount_fat
    record plugfs_r timed sh -c "cat '$mnt/mcopy.bin' >/dev/null"
    unmount
    # The FUSE ceiling: passthrough_ll writes into and reads from a plain directory.
    for peer_opts in "" "-o writeback"; do
        key=peer${peer_opts:+_wb}
        cold
        log "large write and read: passthrough_ll ${peer_opts:-(defaults)}"
        rm -f "$peer/src/large.bin"
        # shellcheck disable=SC2086 # the options are words
        peer_mount $peer_opts
        warm
        record "${key}_w" timed cp "$run/src/large.bin" "$peer/mnt/large.bin"
        peer_unmount
        cold
        # shellcheck disable=SC2086
        peer_mount $peer_opts
        record "${key}_r" timed sh -c "cat '$peer/mnt/large.bin' >/dev/null"
        peer_unmount
    done
    cmp "$run/src/large.bin" "$peer/src/large.bin" || die "passthrough_ll wrote other bytes"
    rm -f "$peer/src/large.bin"
    cold
    log "4 parallel writers: mcopy (the 4 files, one after another)"
    mmd -i "$img" ::/par-mcopy
    cat "$run"/src/par/* >/dev/null
    record mcopy_p timed mcopy -i "$img" "$run"/src/par/part00.bin "$run"/src/par/part01.bin \
        "$run"/src/par/part02.bin "$run"/src/par/part03.bin ::/par-mcopy/
    cold
    log "4 parallel writers: plugfs (4 cp at once)"
    mount_fat
    mkdir "$mnt/par-plugfs"
    cat "$run"/src/par/* >/dev/null
    record plugfs_p timed par_cp
    unmount
    cold
    log "$files small files: mcopy"
    mmd -i "$img" ::/small-mcopy
    cat "$run"/src/small/* >/dev/null
    record mcopy_s timed mcopy -i "$img" "$run/src/small/." ::/small-mcopy/
    cold
    log "$files small files: plugfs"
    mount_fat
    mkdir "$mnt/small-plugfs"
    cat "$run"/src/small/* >/dev/null
    record plugfs_s timed cp -r "$run/src/small/." "$mnt/small-plugfs/"
    # Cross-checks, untimed: plugfs reads what mcopy wrote and the other way round.
    cmp "$run/src/large.bin" "$mnt/mcopy.bin" || die "plugfs reads other bytes than mcopy wrote"
    diff -r "$run/src/small" "$mnt/small-mcopy" >/dev/null || die "the small files mcopy wrote read differently through plugfs"
    diff -r "$run/src/par" "$mnt/par-mcopy" >/dev/null || die "the parts mcopy wrote read differently through plugfs"
    unmount
    mcopy -n -i "$img" ::/plugfs.bin "$run/back.bin"
    cmp "$run/src/large.bin" "$run/back.bin" || die "mcopy reads other bytes than plugfs wrote"
    rm -f "$run/back.bin"
    mkdir "$run/back"
    mcopy -n -i "$img" "::/par-plugfs/*" "$run/back/"
    diff -r "$run/src/par" "$run/back" >/dev/null || die "mcopy reads other bytes than the parallel writers wrote"
    rm -rf "$run/back"
    n=$(mdir -i "$img" -b ::/small-plugfs | wc -l)
    [[ $n == "$files" ]] || die "mdir lists $n files in small-plugfs, not $files"
    fsck.fat -n "$img" >/dev/null || die "fsck.fat -n finds problems in the image"
    log "checked: cross reads identical, mdir lists all $files files, fsck.fat -n clean"
done

table=$(python3 - "$bytes" "$files" "$warm" "$repeat" "$run/times" <<'EOT'
import statistics, sys
b, n, warm, repeat = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
times = {}
for line in open(sys.argv[5]):
    key, secs = line.split()
    times.setdefault(key, []).append(float(secs))
mib = b / 1048576
spreads = []
def rate(key, amount=mib):
    """The median over the rounds of AMOUNT / seconds, and notes the spread."""
    rates = [amount / t for t in times[key]]
    m = statistics.median(rates)
    spreads.append((max(rates) - min(rates)) / m)
    return m
def secs(key):
    t = times[key]
    m = statistics.median(t)
    spreads.append((max(t) - min(t)) / m)
    return m
cache = "warm" if warm else "cold"
rows = [
    (f"large file write ({mib:.0f} MiB), MiB/s", rate("plugfs_w"), rate("mcopy_w")),
    (f"large file read ({mib:.0f} MiB, {cache}), MiB/s", rate("plugfs_r"), rate("mcopy_r")),
    (f"4 parallel writers ({mib:.0f} MiB in 4 files), MiB/s", rate("plugfs_p"), rate("mcopy_p")),
]
print("| workload | plugfs | mcopy | plugfs/mcopy |")
print("| --- | ---: | ---: | ---: |")
for name, p, m in rows:
    print(f"| {name} | {p:,.0f} | {m:,.0f} | {p / m:.1f}x |")
ps, ms = secs("plugfs_s"), secs("mcopy_s")
print(f"| {n:,} small files (1 KiB, long names) into one directory, s | {ps:.2f} | {ms:.2f} | {ms / ps:.1f}x |")
print()
print("The FUSE ceiling: the same `cp` and `cat` through libfuse's passthrough_ll over a plain")
print("directory on the same disk (no FAT work), next to plugfs and the 2x-mcopy target:")
print()
print("| workload | plugfs | passthrough_ll | passthrough_ll -o writeback | 2x mcopy |")
print("| --- | ---: | ---: | ---: | ---: |")
for what, k in (("write", "w"), (f"read ({cache})", "r")):
    print(f"| large file {what}, MiB/s | {rate('plugfs_' + k):,.0f} | {rate('peer_' + k):,.0f} "
          f"| {rate('peer_wb_' + k):,.0f} | {2 * rate('mcopy_' + k):,.0f} |")
print()
print(f"Medians of {repeat} rounds; the widest spread of a cell, (max - min) / median: {max(spreads):.0%}.")
EOT
)
echo
echo "$table"
if ((record)); then
    cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
    {
        echo
        echo "## fat: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD)"
        echo
        echo "\`bench/fat.sh --size $size --files $files --repeat $repeat\`: the fat plugin (release build) through a FUSE"
        echo "mount against mtools on a FAT32 image of ${image_mib} MiB made by \`plugfs-fat mkfs\` (a fresh one each round). Large"
        echo "write: \`cp\` into the mount vs \`mcopy\` in, both from a warm source, both ending with the data in"
        echo "the image's page cache; large read (cold cache): \`cat\` through the mount vs \`mtype\` (each reads"
        echo "the file the other wrote); 4 parallel writers: the large file in 4 parts, 4 \`cp\` at once into"
        echo "the mount vs one \`mcopy\` of the 4 parts (mtools locks the image: one after another); small"
        echo "files: one \`cp -r\` vs one \`mcopy\` of $files files into a new"
        echo "directory. Higher is better in the first three rows; the last row is seconds (lower is better),"
        echo "its ratio mcopy's time over plugfs's."
        echo
        echo "- kernel $(uname -r); CPU $cpu, $(nproc) cores; RAM $(free -g | awk '/^Mem:/{print $2}') GiB;" \
            "scratch on $(stat -f -c %T "$dir"); $(mcopy --version | head -1); load at end $(cut -d' ' -f1-3 /proc/loadavg)"
        echo
        echo "$table"
    } >>"$repo/bench/RESULTS.md"
    log "appended to bench/RESULTS.md"
fi
