# bench/lib.sh: what the benchmark scripts share, sourced by bench/run.sh and bench/wfs.sh.
# The caller defines `results` (where fio writes its JSON), the array `targets` and the
# function `path_of TARGET` (the directory a target is measured in), and a `die` function.

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

fio_job() { # target, job name, round, fio arguments...
    local target=$1 name=$2 out="$results/$1.$2.$3.json"; shift 3
    drop_caches
    fio --name="$name" --filename="$(path_of "$target")/fio.dat" --ioengine=psync --direct=0 \
        --fallocate=none --numjobs=1 --output-format=json "$@" >"$out" ||
        die "fio $name on $target failed (output in $out)"
}

fio_jobs4() { # target, job name, round, fio arguments...: 4 jobs, a file each
    local target=$1 name=$2 out="$results/$1.$2.$3.json"; shift 3
    drop_caches
    fio --name="$name" --directory="$(path_of "$target")" --filename_format='fio4.$jobnum.dat' \
        --ioengine=psync --direct=0 --fallocate=none --numjobs=4 --group_reporting \
        --output-format=json "$@" >"$out" ||
        die "fio $name on $target failed (output in $out)"
}

# The targets of round $1 (0-based), starting with a different one each round.
rotated() {
    local n=${#targets[@]} i
    for ((i = 0; i < n; i++)); do echo "${targets[(i + $1) % n]}"; done
}
