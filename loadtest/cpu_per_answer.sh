#!/usr/bin/env bash
# CPU time per answered REGISTER, for A/B comparisons of two builds on a machine too busy for
# throughput figures: the server's utime + stime (all threads, from /proc/PID/stat) over one bounded
# `register` run, divided by the answers counted. Other load disturbs this far less than answers/s.
#
# usage: loadtest/cpu_per_answer.sh BIN_DIR [allmiss|cached|forward]
#   BIN_DIR holds `sipward` and `sipward-load` (e.g. target/release, or a copy of an older build).
#   allmiss (default): every token new, sipward against mock-as; then as-bench against the same
#   mock-as for the HTTP client's own cost. cached: tokens cached; then the bare responder.
#   forward: a second sipward in forward mode relaying to a bare responder that echoes headers (on
#   LOAD_CPU, standing for a core on another host), cached tokens; CPU per answered transaction.
# env:   DUR (5 s)  WINDOW (256)  SERVER_CPU (0)  LOAD_CPU (1)
# Listens on 127.0.0.1 only, on random ports in 20000-29999; every process is stopped on exit.
set -euo pipefail
B=$(cd "${1:?usage: $0 BIN_DIR [allmiss|cached]}" && pwd)
MODE=${2:-allmiss}
DUR=${DUR:-5}
WINDOW=${WINDOW:-256}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
case $MODE in allmiss | cached | forward) ;; *) echo "mode must be allmiss, cached or forward" >&2; exit 2 ;; esac
SP=$((20000 + RANDOM % 9990)); AP=$((SP + 1)); BP=$((SP + 2)); FP=$((SP + 3))
w=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$w"' EXIT

{ echo SEQUENTIAL; for i in 0 1 2 3 4 5 6 7; do echo "user$i;tok-user$i-$RANDOM$RANDOM"; done; } > "$w/users.csv"
cat > "$w/s.toml" <<T
[server]
udp = ["127.0.0.1:$SP"]
shards = 1
[introspection]
url = "http://127.0.0.1:$AP/introspect"
client_id = "load"
client_secret = "load-secret"
max_inflight = $WINDOW
T
tck=$(getconf CLK_TCK)
# utime and stime, in clock ticks.
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
per() { python3 -c "import sys; c, n, d = map(float, sys.argv[1:]); print(f'{c / $tck / n * 1e6:.2f} µs CPU per answer, {n / d:,.0f} answers/s')" "$@"; }
# $1 $2: utime and stime ticks over the run, $3: answers, $4: seconds. User time is what sipward's
# own code costs; on a busy host the kernel part moves with the load around it far more.
user_kernel() { python3 -c "import sys; u, s, n, d = map(float, sys.argv[1:]); f = 1e6 / $tck / n; print(f'{(u + s) * f:.2f} µs CPU per answer (user {u * f:.2f}, kernel {s * f:.2f}), {n / d:,.0f} answers/s')" "$@"; }
answers() { python3 -c "import json,sys; print(sum(json.load(open(sys.argv[1]))['status'].values()))" "$1"; }
started() { for _ in $(seq 50); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; cat "$1" >&2; return 1; }

taskset -c "$LOAD_CPU" "$B/sipward-load" mock-as --listen "127.0.0.1:$AP" --tokens "$w/users.csv" \
    --client-id load --client-secret load-secret 2> "$w/as.log" &
pids+=($!)
started "$w/as.log" "mock-as listening"
taskset -c "$SERVER_CPU" "$B/sipward" --config "$w/s.toml" --log-level warn 2> "$w/s.log" &
sp=$!
pids+=($sp)
for _ in $(seq 50); do ss -Hlnu "sport = :$SP" | grep -q . && break; sleep 0.1; done

load=(--tokens "$w/users.csv" --window "$WINDOW" --warmup-s 0 --duration-s "$DUR" --json)
[ "$MODE" = allmiss ] && load+=(--new-share 1.0)
# $1: server pid, $2: port, $3: label
measure() {
    local c0 c1 n
    c0=($(cpu "$1"))
    timeout $((DUR + 30)) taskset -c "$LOAD_CPU" "$B/sipward-load" register --target "127.0.0.1:$2" \
        "${load[@]}" > "$w/r.json" 2> "$w/r.err"
    c1=($(cpu "$1"))
    n=$(answers "$w/r.json")
    echo "$3: $(user_kernel $((c1[0] - c0[0])) $((c1[1] - c0[1])) "$n" "$DUR")"
}
first=$MODE
[ "$MODE" = forward ] && first="respond, cached"
measure "$sp" "$SP" "sipward ($first)"
if [ "$MODE" = forward ]; then
    taskset -c "$LOAD_CPU" "$B/sipward-load" bare-responder --listen "127.0.0.1:$BP" --echo-headers 2> "$w/b.log" &
    pids+=($!)
    started "$w/b.log" "bare-responder listening"
    { sed -e "s/127.0.0.1:$SP/127.0.0.1:$FP/" "$w/s.toml"; printf '\n[forward]\nupstream = "udp:127.0.0.1:%s"\nflow_key = "cpu-per-answer-test-key"\n' "$BP"; } > "$w/f.toml"
    taskset -c "$SERVER_CPU" "$B/sipward" --config "$w/f.toml" --log-level warn 2> "$w/f.log" &
    fp=$!
    pids+=($fp)
    for _ in $(seq 50); do ss -Hlnu "sport = :$FP" | grep -q . && break; sleep 0.1; done
    measure "$fp" "$FP" "sipward (forward)"
elif [ "$MODE" = cached ]; then
    taskset -c "$SERVER_CPU" "$B/sipward-load" bare-responder --listen "127.0.0.1:$BP" 2> "$w/b.log" &
    bp=$!
    pids+=($bp)
    started "$w/b.log" "bare-responder listening"
    measure "$bp" "$BP" "bare responder"
else
    # as-bench is a short-lived client: its own CPU time comes from bash's `times` of the child.
    TIMEFORMAT='%U %S'
    { time timeout $((DUR + 30)) taskset -c "$SERVER_CPU" "$B/sipward-load" as-bench \
        --url "http://127.0.0.1:$AP/introspect" --concurrency "$WINDOW" --warmup-s 0 --duration-s "$DUR" \
        --client-id load --client-secret load-secret --new-tokens-for "$w/users.csv" --json \
        > "$w/a.json" 2> "$w/a.err"; } 2> "$w/t.txt"
    n=$(answers "$w/a.json")
    t=$(awk '{printf "%d", ($1 + $2) * '"$tck"'}' "$w/t.txt")
    echo "as-bench alone: $(per "$t" "$n" "$DUR")"
fi
