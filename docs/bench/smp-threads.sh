#!/bin/sh
# Four pthreads summing ranges: native, on mmkit with 1 vCPU, on mmkit with 2 vCPUs.
# Prints each run's wall time (mmkit: the run itself, from `--stat`, machine boot excluded;
# native: the process, from `date`), then the range per configuration.
#   docs/bench/smp-threads.sh [RUNS] [PER_THREAD]       (defaults: 7 runs, 100000000)
# Needs cc, /dev/kvm and a release build (cargo build --release -p mmkit-sim).
set -eu
RUNS=${1:-7}
PER=${2:-100000000}
MMKIT=${MMKIT:-target/release/mmkit}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT INT TERM
cat > "$DIR/sum4.c" <<'C'
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#define N 4
static unsigned long long part[N], per;
static void *run(void *a) {
    long i = (long)a;
    unsigned long long s = 0, lo = i * per, hi = lo + per;
    for (unsigned long long x = lo; x < hi; x++) s += x * x % 7;
    part[i] = s;
    return 0;
}
int main(int argc, char **argv) {
    per = strtoull(argv[1], 0, 0);
    pthread_t t[N];
    for (long i = 0; i < N; i++) pthread_create(&t[i], 0, run, (void *)i);
    unsigned long long s = 0;
    for (int i = 0; i < N; i++) { pthread_join(t[i], 0); s += part[i]; }
    printf("%llu\n", s);
    return 0;
}
C
cc -O2 -pthread -o "$DIR/sum4" "$DIR/sum4.c"
range() { sort -n | awk 'NR==1{lo=$1} {hi=$1; s+=$1; n++} END{printf "%.3f-%.3f s (median of %d: ", lo, hi, n}'; }
for cfg in native 1 2; do
    : > "$DIR/$cfg"
    i=0
    while [ $i -lt "$RUNS" ]; do
        if [ $cfg = native ]; then
            t0=$(date +%s.%N); "$DIR/sum4" "$PER" > "$DIR/out"; t1=$(date +%s.%N)
            echo "$t1 - $t0" | bc >> "$DIR/$cfg"
        else
            "$MMKIT" exec --cpus $cfg --stat "$DIR/sum4" "$PER" > "$DIR/out" 2> "$DIR/stat"
            awk '/^time:/ {print $2}' "$DIR/stat" >> "$DIR/$cfg"
        fi
        cmp -s "$DIR/out" "$DIR/out.first" 2>/dev/null || { [ -f "$DIR/out.first" ] && { echo "output differs"; exit 1; }; cp "$DIR/out" "$DIR/out.first"; }
        i=$((i + 1))
    done
    med=$(sort -n "$DIR/$cfg" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    echo "$cfg: $(tr '\n' ' ' < "$DIR/$cfg")"
    printf '%s: %s%s)\n' "$cfg" "$(range < "$DIR/$cfg")" "$med"
done
