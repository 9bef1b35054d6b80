#!/usr/bin/env bash
# bench/s3.sh: the s3 plugin against s3fs-fuse, on one moto server in one run.
#
#   bench/s3.sh [--no-build] [--size 256M] [--files 1000] [--big 100000] [--dir DIR] [--record]
#
# Starts moto (target/moto-venv, made by scripts/setup-s3-test-server.sh) on a free
# 127.0.0.1 port, one bucket per client, and mounts one with plugfs (the --release build,
# s3 plugin, defaults but for the endpoint) and one with s3fs (Debian's s3fs package,
# installed here if missing; defaults but for the endpoint, path-style requests and the
# credentials file). Then, on each:
#   seq write:   dd of a SIZE file (random data, read from a warm page cache) into the
#                mount, bs=1M conv=fsync: timed until the data is stored in the bucket
#   seq read:    the file back with cat, after a remount (nothing cached by either)
#   create:      FILES files of 1 KiB into a new directory (open, write, close each)
#   ls -l cold:  ls -l of that directory after a remount
#   ls -l warm:  the same again at once
#   big ls -l:   ls -l of a directory of BIG keys, cold (a new mount) and warm: empty
#                objects made by boto3 (4 processes of 16 threads) straight into a third
#                bucket that each client mounts read-only at its own mountpoint for this
#                row; --big 0 skips it
# Every row is checked: md5 of what was read, and the number of names ls saw.
#
# Prints a table with the ratio plugfs/s3fs (higher is better for plugfs); with --record
# appends it to bench/RESULTS.md with the date and machine. As root (mounts, drops caches).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build=1 size=256M files=1000 big=100000 dir="$repo/bench/work" record=0
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --size) size=$2; shift ;;
        --files) files=$2; shift ;;
        --big) big=$2; shift ;;
        --dir) dir=$2; shift ;;
        --record) record=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/s3.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
die() { echo "bench/s3.sh: $*" >&2; exit 1; }
log() { echo "== $*" >&2; }
[[ $(id -u) == 0 ]] || die "run as root (mounts, drops caches)"
command -v fusermount3 >/dev/null || die "fusermount3 missing (apt-get install fuse3)"
if ! command -v s3fs >/dev/null; then
    log "installing s3fs (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s3fs >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq s3fs >/dev/null
    } || die "cannot install s3fs"
fi
"$repo/scripts/setup-s3-test-server.sh"
venv="${PLUGFS_MOTO_VENV:-${CARGO_TARGET_DIR:-$repo/target}/moto-venv}"

release="${CARGO_TARGET_DIR:-$repo/target}/release"
if ((build)); then
    log "cargo build --release -p plugfs -p plugfs-s3"
    (cd "$repo" && cargo build --release -p plugfs -p plugfs-s3)
fi
[[ -x $release/plugfs && -e $release/libplugfs_s3.so ]] || die "no release build in $release (run without --no-build)"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
run="$dir/s3"
for m in "$run/plugfs-mnt" "$run/s3fs-mnt" "$run/plugfs-big" "$run/s3fs-big"; do
    findmnt -rn --mountpoint "$m" >/dev/null 2>&1 && { fusermount3 -u "$m" || umount -l "$m"; }
done
rm -rf "$run"
mkdir -p "$run/plugfs-mnt" "$run/s3fs-mnt" "$run/cache"

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
log "moto on $endpoint"
setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$run/moto.log" 2>&1 &
moto=$!
plugfs_pid=
cleanup() {
    set +e
    [[ -n $plugfs_pid ]] && kill "$plugfs_pid" 2>/dev/null && wait "$plugfs_pid" 2>/dev/null
    fusermount3 -u "$run/s3fs-mnt" 2>/dev/null || umount -l "$run/s3fs-mnt" 2>/dev/null
    fusermount3 -u "$run/s3fs-big" 2>/dev/null || umount -l "$run/s3fs-big" 2>/dev/null
    fusermount3 -u -z "$run/plugfs-big" 2>/dev/null
    fusermount3 -u -z "$run/plugfs-mnt" 2>/dev/null
    kill -- -"$moto" 2>/dev/null
}
trap cleanup EXIT
for _ in $(seq 100); do
    "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$endpoint', timeout=1)" 2>/dev/null && break
    sleep 0.2
done
"$venv/bin/python" - "$endpoint" <<'EOF' || die "moto did not answer"
import sys, boto3
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')
for b in ('bench-plugfs', 'bench-s3fs'):
    s3.create_bucket(Bucket=b)
EOF
if ((big > 0)); then
    log "making $big keys under big/ in bucket bench-big (boto3, 4 processes x 16 threads)"
    t0=$(date +%s.%N)
    "$venv/bin/python" - "$endpoint" "$big" <<'EOF' || die "could not make the keys of big/"
import sys, threading, multiprocessing, boto3, botocore.config
endpoint, n = sys.argv[1], int(sys.argv[2])
def client():
    return boto3.session.Session().client('s3', endpoint_url=endpoint, aws_access_key_id='test',
        aws_secret_access_key='test', region_name='us-east-1',
        config=botocore.config.Config(max_pool_connections=16, retries={'max_attempts': 10}))
def proc(p):
    def work(t):
        s3 = client()
        for i in range(p * 16 + t, n, 64):
            s3.put_object(Bucket='bench-big', Key='big/k%06d' % i, Body=b'')
    ts = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for t in ts: t.start()
    for t in ts: t.join()
client().create_bucket(Bucket='bench-big')
ps = [multiprocessing.Process(target=proc, args=(p,)) for p in range(4)]
for p in ps: p.start()
for p in ps: p.join()
sys.exit(max(p.exitcode for p in ps))
EOF
    log "made in $(awk "BEGIN { print $(date +%s.%N) - $t0 }") s"
fi

cat >"$run/plugfs.toml" <<EOF
[[mount]]
name = "bench"
plugin = "$release/libplugfs_s3.so"
mountpoint = "$run/plugfs-mnt"
[mount.config]
bucket = "bench-plugfs"
endpoint = "$endpoint"
path_style = true
allow_http = true
access_key_id = "test"
secret_access_key = "test"
cache_dir = "$run/cache"
EOF
echo "test:test" >"$run/passwd"
chmod 600 "$run/passwd"

mount_plugfs() {
    RUST_LOG=warn "$release/plugfs" mount --config "$run/plugfs.toml" 2>>"$run/plugfs.log" &
    plugfs_pid=$!
    for _ in $(seq 200); do findmnt -rn --mountpoint "$run/plugfs-mnt" >/dev/null && return; sleep 0.05; done
    die "plugfs did not mount: $(cat "$run/plugfs.log")"
}
umount_plugfs() {
    kill "$plugfs_pid" && wait "$plugfs_pid" || true
    plugfs_pid=
}
mount_s3fs() {
    s3fs bench-s3fs "$run/s3fs-mnt" -o url="$endpoint" -o use_path_request_style \
        -o passwd_file="$run/passwd" -o dbglevel=warn
    for _ in $(seq 200); do findmnt -rn --mountpoint "$run/s3fs-mnt" >/dev/null && return; sleep 0.05; done
    die "s3fs did not mount"
}
umount_s3fs() { fusermount3 -u "$run/s3fs-mnt"; }
remount() { if [[ $1 == plugfs ]]; then umount_plugfs; mount_plugfs; else umount_s3fs; mount_s3fs; fi; }
now() { date +%s.%N; }
calc() { awk "BEGIN { print $* }"; }
secs() { calc "$2 - $1"; }

log "making a $size source file"
src="$run/src.bin"
head -c "$size" /dev/urandom >"$src"
bytes=$(stat -c %s "$src")
sum=$(md5sum <"$src" | cut -d' ' -f1)
cat "$src" >/dev/null

declare -A T
mount_plugfs
mount_s3fs
for who in plugfs s3fs; do
    m="$run/$who-mnt"
    log "$who: seq write"
    t0=$(now); dd if="$src" of="$m/big" bs=1M conv=fsync status=none; t1=$(now)
    T[$who,write]=$(secs "$t0" "$t1")
    remount "$who"
    sync; echo 3 >/proc/sys/vm/drop_caches
    log "$who: seq read"
    t0=$(now); got=$(cat "$m/big" | md5sum | cut -d' ' -f1); t1=$(now)
    [[ $got == "$sum" ]] || die "$who read back a different file"
    T[$who,read]=$(secs "$t0" "$t1")
    log "$who: create $files files"
    mkdir "$m/small"
    t0=$(now)
    python3 - "$m/small" "$files" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
data = b"x" * 1024
for i in range(n):
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(data)
EOF
    t1=$(now)
    T[$who,create]=$(secs "$t0" "$t1")
    remount "$who"
    sync; echo 3 >/proc/sys/vm/drop_caches
    log "$who: ls -l cold and warm"
    t0=$(now); n=$(ls -l "$m/small" | grep -c '^-'); t1=$(now)
    [[ $n == "$files" ]] || die "$who: ls -l showed $n files, not $files"
    T[$who,lscold]=$(secs "$t0" "$t1")
    t0=$(now); n=$(ls -l "$m/small" | grep -c '^-'); t1=$(now)
    [[ $n == "$files" ]] || die "$who: warm ls -l showed $n files, not $files"
    T[$who,lswarm]=$(secs "$t0" "$t1")
done
if ((big > 0)); then
    umount_plugfs
    umount_s3fs
    sync; echo 3 >/proc/sys/vm/drop_caches
    sed -e "s|bench-plugfs|bench-big|; s|$run/plugfs-mnt|$run/plugfs-big|; s|$run/cache|$run/cache-big|" \
        -e 's|name = "bench"|name = "big"|' "$run/plugfs.toml" >"$run/plugfs-big.toml"
    mkdir -p "$run/plugfs-big" "$run/s3fs-big" "$run/cache-big"
    for who in plugfs s3fs; do
        m="$run/$who-big"
        if [[ $who == plugfs ]]; then
            RUST_LOG=warn "$release/plugfs" mount --config "$run/plugfs-big.toml" 2>>"$run/plugfs.log" &
            plugfs_pid=$!
        else
            s3fs bench-big "$m" -o url="$endpoint" -o use_path_request_style \
                -o passwd_file="$run/passwd" -o dbglevel=warn
        fi
        for _ in $(seq 200); do findmnt -rn --mountpoint "$m" >/dev/null && break; sleep 0.05; done
        findmnt -rn --mountpoint "$m" >/dev/null || die "$who did not mount bench-big"
        log "$who: ls -l of $big keys, cold and warm"
        t0=$(now); n=$(ls -l "$m/big" | grep -c '^-'); t1=$(now)
        [[ $n == "$big" ]] || die "$who: ls -l big showed $n files, not $big"
        T[$who,bigcold]=$(secs "$t0" "$t1")
        t0=$(now); n=$(ls -l "$m/big" | grep -c '^-'); t1=$(now)
        [[ $n == "$big" ]] || die "$who: warm ls -l big showed $n files, not $big"
        T[$who,bigwarm]=$(secs "$t0" "$t1")
        if [[ $who == plugfs ]]; then umount_plugfs; else fusermount3 -u "$m"; fi
    done
fi

mib=$(calc "$bytes / 1048576")
row() { # name, key, kind (rate: MiB/s from seconds | time: seconds)
    local p=${T[plugfs,$2]} s=${T[s3fs,$2]}
    if [[ $3 == rate ]]; then
        printf "| %s | %.1f MiB/s | %.1f MiB/s | %.2f |\n" "$1" "$(calc "$mib / $p")" "$(calc "$mib / $s")" "$(calc "$s / $p")"
    else
        printf "| %s | %.3f s | %.3f s | %.2f |\n" "$1" "$p" "$s" "$(calc "$s / $p")"
    fi
}
table=$(
    echo "| row | plugfs | s3fs | plugfs / s3fs (higher: plugfs ahead) |"
    echo "| --- | --- | --- | --- |"
    row "seq write $size (dd bs=1M conv=fsync)" write rate
    row "seq read $size (cat, after a remount)" read rate
    row "create $files files of 1 KiB" create time
    row "ls -l of $files files, cold" lscold time
    row "ls -l of $files files, warm" lswarm time
    if ((big > 0)); then
        row "ls -l of $big keys, cold" bigcold time
        row "ls -l of $big keys, warm" bigwarm time
    fi
)
echo "$table"
if ((record)); then
    {
        echo
        echo "## s3: plugfs vs s3fs $(s3fs --version 2>/dev/null | head -1 | awk '{print $NF}'), moto, $(date -u +%Y-%m-%d), $(nproc) cores"
        echo
        echo "$table"
    } >>"$repo/bench/RESULTS.md"
fi
