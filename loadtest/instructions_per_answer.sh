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

# $1: seconds of load, $2: a name for the run; writes "instructions answers" to $w/$2.count. Run
# in this shell, not in a command substitution, so that `set -e` and the trap's pid list hold.
count() {
    local sp vp n ir
    sp=$((20000 + RANDOM % 9990))
    [ "$sp" -ne "$AP" ] || sp=$((sp + 1))
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
    valgrind --tool=callgrind --callgrind-out-file="$w/$2.cg" "$B/sipward" --config "$w/s.toml" \
        --log-level warn 2> "$w/$2.vg" &
    vp=$!
    pids+=("$vp")
    local up=0
    for _ in $(seq 150); do
        if ss -Hlnu "sport = :$sp" | grep -q .; then up=1; break; fi
        kill -0 "$vp" 2>/dev/null || break
        sleep 0.2
    done
    [ "$up" -eq 1 ] || { echo "sipward did not listen on udp $sp:" >&2; cat "$w/$2.vg" >&2; exit 1; }
    # The cache is filled by the first request of each user; those misses are in both runs.
    timeout $(($1 + 60)) "$B/sipward-load" register --target "127.0.0.1:$sp" --tokens "$w/users.csv" \
        --window "$WINDOW" --warmup-s 0 --duration-s "$1" --json > "$w/$2.json" 2> "$w/$2.err"
    kill -INT "$vp"
    wait "$vp" 2>/dev/null || true
    n=$(python3 -c "import json,sys; print(sum(json.load(open(sys.argv[1]))['status'].values()))" "$w/$2.json")
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$w/$2.cg")
    [ -n "$ir" ] || { echo "no callgrind totals for the $2 run:" >&2; cat "$w/$2.vg" >&2; exit 1; }
    echo "$ir $n" > "$w/$2.count"
}
count "$SHORT" short
count "$LONG" long
read -r i1 n1 < "$w/short.count"
read -r i2 n2 < "$w/long.count"
python3 - "$i1" "$n1" "$i2" "$n2" <<'PY'
import sys
i1, n1, i2, n2 = map(int, sys.argv[1:])
if not 0 < n1 < n2:
    sys.exit(f"the runs answered {n1:,} and {n2:,} requests: the longer run must answer more")
print(f"{(i2 - i1) / (n2 - n1):,.0f} instructions per answer ({n1:,} and {n2:,} answers)")
PY
