#!/bin/sh
# Two compute-bound programs that share nothing (`sum1`: one thread, 4·10⁸ iterations of
# arithmetic, no system call) run at once: natively, on one mmkit VM with 1 vCPU, on one VM
# with 2 vCPUs, and as two mmkit processes of 1 vCPU each. Counts, not only times, since a
# shared machine makes times noisy: per configuration and run, the CPU time the processes
# used (task-clock), their context switches, the local timer interrupts and hrtimers armed
# while they ran; the wall time (mmkit: of the run, machine boot excluded, as `--stat`
# prints it, the longer of two processes; native: of the shell) and (mmkit) the time inside
# KVM_RUN, all vCPUs summed.
#   docs/bench/smp-wakeups.sh [RUNS] [ITERATIONS]         (defaults: 3 runs, 400000000)
#   MMKIT=path/to/mmkit  the binary (default target/release/mmkit)
#   NAP=1                also run each mmkit configuration beside a process that sleeps
#                        100 µs at a time (the control: what a polling thread costs)
# Needs root (perf tracepoints), perf, cc, /dev/kvm and a release build.
set -eu
RUNS=${1:-3}
N=${2:-400000000}
MMKIT=$(realpath "${MMKIT:-target/release/mmkit}")
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT INT TERM
cat > "$DIR/sum1.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    unsigned long long n = strtoull(argv[1], 0, 0), s = 0;
    for (unsigned long long x = 0; x < n; x++) s += x * x % 7;
    printf("%llu\n", s);
    return 0;
}
C
cat > "$DIR/nap.c" <<'C'
#include <time.h>
int main(void) {
    struct timespec t = {0, 100000};
    for (;;) nanosleep(&t, 0);
}
C
cc -O2 -static -o "$DIR/sum1" "$DIR/sum1.c"
cc -O2 -o "$DIR/nap" "$DIR/nap.c"
cd "$DIR"
EV=task-clock,context-switches,irq_vectors:local_timer_entry,timer:hrtimer_start
run() { # name, command
    t0=$(date +%s.%N)
    perf stat -x, -e "$EV" -o "$DIR/perf" -- sh -c "$2" > "$DIR/out" 2>&1
    t1=$(date +%s.%N)
    guest=$(awk '/^time:/ {g += $5; n++} END {if (n) printf "%.3f", g; else printf "-"}' "$DIR/out")
    wall=$(awk -v t="$(echo "$t1 - $t0" | bc)" '/^time:/ {if ($2 > w) w = $2; n++} END {printf "%.3f", n ? w : t}' "$DIR/out")
    awk -F, -v name="$1" -v guest="$guest" -v wall="$wall" '
        /task-clock/ {cpu = $1 / 1000}
        /context-switches/ {cs = $1}
        /local_timer_entry/ {lt = $1}
        /hrtimer_start/ {hr = $1}
        END {printf "%-34s wall %6.3f s  cpu %6.3f s  guest %6s s  cs %6d  timer irqs %6d  hrtimers %6d\n", name, wall, cpu, guest, cs, lt, hr}
    ' "$DIR/perf"
}
i=0
while [ "$i" -lt "$RUNS" ]; do
    run "native, one" "./sum1 $N"
    run "native, two at once" "./sum1 $N & ./sum1 $N; wait"
    run "mmkit --cpus 2, one" "$MMKIT exec --cpus 2 --stat ./sum1 $N"
    for nap in 0 ${NAP:+1}; do
        tag=""
        if [ "$nap" = 1 ]; then ./nap & NAPPID=$!; tag=" + nap"; fi
        run "mmkit --cpus 1, two at once$tag" "$MMKIT exec --cpus 1 --stat sh -c './sum1 $N & ./sum1 $N; wait'"
        run "mmkit --cpus 2, two at once$tag" "$MMKIT exec --cpus 2 --stat sh -c './sum1 $N & ./sum1 $N; wait'"
        run "two mmkit --cpus 1, one each$tag" "$MMKIT exec --cpus 1 --stat ./sum1 $N & $MMKIT exec --cpus 1 --stat ./sum1 $N; wait"
        if [ "$nap" = 1 ]; then kill "$NAPPID"; wait "$NAPPID" 2>/dev/null || true; fi
    done
    i=$((i + 1))
done
