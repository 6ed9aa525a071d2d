#!/usr/bin/env bash
# User-space instructions sipward executes per answered cached-token REGISTER, counted by callgrind
# while `register` drives it over UDP: exact and repeatable for one build, whatever else the machine
# is doing, where answers/s and even CPU time per answer move by 10% between runs of one binary here.
# Kernel work (the datagram paths) is not counted; for that see cpu_per_answer.sh and perf.
#
# usage: loadtest/instructions_per_answer.sh BIN_DIR
#   BIN_DIR holds `sipward` and `sipward-load` (e.g. target/release, or a copy of an older build).
# env:   SHORT (2 s) LONG (5 s): the two runs; the figure is (I_long - I_short) / (N_long - N_short),
#        so start-up and shutdown cancel out. WINDOW (64).
# sipward runs on the epoll driver (valgrind does not follow io_uring's shared rings); the request
# path is the same code under both drivers. Listens on 127.0.0.1 only, on random ports; every
# process is stopped on exit. Needs valgrind (Debian package).
set -euo pipefail
B=$(cd "${1:?usage: $0 BIN_DIR}" && pwd)
SHORT=${SHORT:-2}
LONG=${LONG:-5}
WINDOW=${WINDOW:-64}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
w=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$w"' EXIT

{ echo SEQUENTIAL; for i in 0 1 2 3 4 5 6 7; do echo "user$i;tok-user$i-$RANDOM$RANDOM"; done; } > "$w/users.csv"
AP=$((20000 + RANDOM % 9990))
"$B/sipward-load" mock-as --listen "127.0.0.1:$AP" --tokens "$w/users.csv" \
    --client-id load --client-secret load-secret 2> "$w/as.log" &
pids+=($!)

# $1: seconds of load; prints "instructions answers"
count() {
    local sp=$((20000 + RANDOM % 9990)) vp n ir
    cat > "$w/s.toml" <<T
[server]
udp = ["127.0.0.1:$sp"]
tcp = []
shards = 1
io = "epoll"
[introspection]
url = "http://127.0.0.1:$AP/introspect"
client_id = "load"
client_secret = "load-secret"
T
    valgrind --tool=callgrind --callgrind-out-file="$w/cg.out" "$B/sipward" --config "$w/s.toml" \
        --log-level warn 2> "$w/vg.log" &
    vp=$!
    pids+=($vp)
    for _ in $(seq 150); do ss -Hlnu "sport = :$sp" | grep -q . && break; sleep 0.2; done
    # The cache is filled by the first request of each user; those misses are in both runs.
    timeout $(($1 + 60)) "$B/sipward-load" register --target "127.0.0.1:$sp" --tokens "$w/users.csv" \
        --window "$WINDOW" --warmup-s 0 --duration-s "$1" --json > "$w/r.json" 2> "$w/r.err"
    kill -INT "$vp"
    wait "$vp" 2>/dev/null || true
    n=$(python3 -c "import json,sys; print(sum(json.load(open(sys.argv[1]))['status'].values()))" "$w/r.json")
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$w/cg.out")
    echo "$ir $n"
}
read -r i1 n1 <<< "$(count "$SHORT")"
read -r i2 n2 <<< "$(count "$LONG")"
python3 -c "import sys; i1, n1, i2, n2 = map(int, sys.argv[1:]); print(f'{(i2 - i1) / (n2 - n1):,.0f} instructions per answer ({n1:,} and {n2:,} answers)')" \
    "$i1" "$n1" "$i2" "$n2"
