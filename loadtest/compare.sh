#!/usr/bin/env bash
# Reproduces the comparison table of sipward against Kamailio 5.6 and a bare UDP responder, and of
# sipward's all-miss path against the introspection server alone, on one 2-core machine:
#
#   server under test   pinned to CPU 0 (SERVER_CPU), 1 shard / 1 worker
#   load generator      pinned to CPU 1 (LOAD_CPU)
#   mock-as             pinned to CPU 1 (AS_CPU), one tokio thread, one instance for every run
#   as-bench            pinned to CPU 0 (it stands where sipward stands: the client of mock-as)
#
# usage: loadtest/compare.sh     (root or sudo: it installs Kamailio when missing)
# env:   RUNS (3)  DURATION (10 s measured)  WARMUP (2 s)  WINDOW (256)  CONNECTIONS (100)
#        OUT (/tmp/compare.md)  SERVER_CPU (0)  LOAD_CPU (1)  AS_CPU (LOAD_CPU)
#        PORT_BASE (15060: sipward +0, Kamailio udp +10, tcp +11, bare +20, mock-as +3000)
#        SIPWARD_IO (auto: sipward's [server] io, or io_uring / epoll)
#        SKIP_KAMAILIO=1 to leave Kamailio out, CARGO_TARGET_DIR as for cargo.
#        SLOW_AS_MS (20): latency of the second mock-as, the slow authorization server of the
#        all-miss comparison (0 leaves that phase out); SLOW_AS_PORT (mock-as port + 1), second
#        sipward on SIPWARD_PORT + 2 pointing at it.
#        FORWARD (1): also forward mode, cached tokens, UDP: sipward (+1) relaying to a bare responder
#        that echoes the request's headers (+21), beside Kamailio doing the same (kamailio-forward.cfg.in, +12).
#        FWD_UPSTREAM_CPU (LOAD_CPU): where that responder runs. It stands for a core on another
#        host; on the server's CPU it would take that core's time from the system under test.
#
# Everything listens on 127.0.0.1 only; every load run is bounded (warm-up + duration + 2 s timeout,
# and a `timeout` around it); every process the script starts is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
peers=$(cd "$root/../shared/peers" 2>/dev/null && pwd || true)

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-256}
CONNECTIONS=${CONNECTIONS:-100}
OUT=${OUT:-/tmp/compare.md}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
AS_CPU=${AS_CPU:-$LOAD_CPU}
PORT_BASE=${PORT_BASE:-15060}
SKIP_KAMAILIO=${SKIP_KAMAILIO:-0}
SIPWARD_IO=${SIPWARD_IO:-auto}
SLOW_AS_MS=${SLOW_AS_MS:-20}
FORWARD=${FORWARD:-1}
FWD_UPSTREAM_CPU=${FWD_UPSTREAM_CPU:-$LOAD_CPU}

SIPWARD_PORT=$PORT_BASE
KAM_UDP_PORT=$((PORT_BASE + 10))
KAM_TCP_PORT=$((PORT_BASE + 11))
BARE_PORT=$((PORT_BASE + 20))
FWD_PORT=$((PORT_BASE + 1))
KAM_FWD_PORT=$((PORT_BASE + 12))
FWD_BARE_PORT=$((PORT_BASE + 21))
AS_PORT=$((PORT_BASE + 3000))
AS_URL="http://127.0.0.1:$AS_PORT/introspect"
SLOW_AS_PORT=${SLOW_AS_PORT:-$((AS_PORT + 1))}
SLOW_AS_URL="http://127.0.0.1:$SLOW_AS_PORT/introspect"
SLOW_SIPWARD_PORT=$((SIPWARD_PORT + 2))
CLIENT_ID=load
CLIENT_SECRET=load-secret
# A run may take warm-up + duration + the 2 s response timeout; anything past this is a hang.
RUN_LIMIT=$((WARMUP + DURATION + 30))

# The script's own stderr, kept on fd 3: a trap may run inside a function whose stderr goes to a file.
exec 3>&2
log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die() { log "error: $*"; exit 1; }

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

work=$(mktemp -d /tmp/sipward-compare.XXXXXX)
pids=()
kam_cfgs=()
# The client (or build) running now. It runs in the background and is waited for, so that a signal
# to this script is handled at once instead of after the child finishes.
running=""
fgrun() {
    "$@" &
    running=$!
    local rc=0
    wait "$running" || rc=$?
    running=""
    return $rc
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p kids=()
    if [ -n "$running" ]; then kill -TERM "$running" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do
        # Kamailio forks its workers; collect them before their parent goes.
        mapfile -t -O "${#kids[@]}" kids < <(pgrep -P "$p" 2>/dev/null || true)
        kill -TERM "$p" 2>/dev/null || true
    done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${pids[@]}" "${kids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.3
    done
    for p in "${pids[@]}" "${kids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for c in "${kam_cfgs[@]}"; do rm -f "$c"; done
    if [ $rc -ne 0 ]; then log "exit $rc; logs and raw results kept in $work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (server and load generator on separate cores)"
for t in taskset python3 ss timeout pgrep; do command -v $t >/dev/null || die "$t is missing"; done

port_free() { ! ss -Hlnu "sport = :$1" | grep -q . && ! ss -Hlnt "sport = :$1" | grep -q .; }
for p in $SIPWARD_PORT $SLOW_SIPWARD_PORT $KAM_UDP_PORT $KAM_TCP_PORT $BARE_PORT $AS_PORT $SLOW_AS_PORT $FWD_PORT $KAM_FWD_PORT $FWD_BARE_PORT; do
    port_free "$p" || die "port $p is in use on this machine; set PORT_BASE"
done

# Waits until file $1 contains $2 or process $3 dies (then fails), for at most $4 seconds.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 limit=${4:-20} i=0
    while ! grep -q "$pattern" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; return 1; }
        i=$((i + 1)); [ $i -le $((limit * 10)) ] || { cat "$file" >&2; return 1; }
        sleep 0.1
    done
}

# Waits until something listens on $1 ($2: udp or tcp) or process $3 dies.
wait_for_port() {
    local port=$1 proto=$2 pid=$3 i=0 flag=-Hlnu
    [ "$proto" = tcp ] && flag=-Hlnt
    while ! ss $flag "sport = :$port" | grep -q .; do
        kill -0 "$pid" 2>/dev/null || return 1
        i=$((i + 1)); [ $i -le 200 ] || return 1
        sleep 0.1
    done
}

cmds=$work/commands.txt
: > "$cmds"
# Records an exact command line for the report (each distinct line once).
record() { local line="$*"; grep -qxF -- "$line" "$cmds" || printf '%s\n' "$line" >> "$cmds"; }

# ---------------------------------------------------------------------------------------------
# Build.
cd "$root"
log "building release binaries"
record "cargo build --release --locked -p sipward -p sipward-load"
fgrun cargo build --release --locked -p sipward -p sipward-load >&2
tdir=${CARGO_TARGET_DIR:-$root/target}
case $tdir in /*) ;; *) tdir=$root/$tdir ;; esac
SIPWARD=$tdir/release/sipward
LOAD=$tdir/release/sipward-load
[ -x "$SIPWARD" ] && [ -x "$LOAD" ] || die "binaries not found in $tdir/release"

# ---------------------------------------------------------------------------------------------
# Kamailio.
kam_note=""
if [ "$SKIP_KAMAILIO" = 1 ]; then
    kam_note="Kamailio skipped (SKIP_KAMAILIO=1)."
elif [ -z "$peers" ] || [ ! -x "$peers/run-kamailio.sh" ]; then
    kam_note="Kamailio not run: ../shared/peers/run-kamailio.sh not found."
else
    kmods=/usr/lib/x86_64-linux-gnu/kamailio/modules
    if ! command -v kamailio >/dev/null || [ ! -f $kmods/http_client.so ] || [ ! -f $kmods/jansson.so ] \
        || [ ! -f $kmods/htable.so ]; then
        log "installing Kamailio (Debian packages)"
        # Packages must not start a system-wide Kamailio (it would listen on 0.0.0.0:5060).
        made_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' | sudo_ tee /usr/sbin/policy-rc.d >/dev/null
            sudo_ chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        # Debian 12 ships the jansson module (jansson_get) in kamailio-extra-modules, not in
        # kamailio-json-modules (json, jsonrpcc, pua_json).
        record "apt-get update && apt-get install -y kamailio kamailio-utils-modules kamailio-json-modules kamailio-extra-modules"
        if ! { sudo_ apt-get update -q >&2 && sudo_ env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q kamailio kamailio-utils-modules kamailio-json-modules \
                kamailio-extra-modules >&2; }; then
            kam_note="Kamailio not run: apt-get install failed."
        fi
        if [ $made_policy -eq 1 ]; then sudo_ rm -f /usr/sbin/policy-rc.d; fi
    fi
    for m in http_client jansson htable; do
        [ -f $kmods/$m.so ] \
            || kam_note=${kam_note:-"Kamailio not run: module $m.so missing after install."}
    done
    command -v kamailio >/dev/null || kam_note=${kam_note:-"Kamailio not run: not installed."}
fi
kam_version=""
[ -z "$kam_note" ] && kam_version=$(kamailio -v 2>/dev/null | head -1)

# ---------------------------------------------------------------------------------------------
# Inputs.
users=$work/users.csv
{
    echo "SEQUENTIAL"
    for i in 0 1 2 3 4 5 6 7; do echo "user$i;tok-user$i-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"; done
} > "$users"

cat > "$work/sipward.toml" <<TOML
[server]
udp = ["127.0.0.1:$SIPWARD_PORT"]
tcp = ["127.0.0.1:$SIPWARD_PORT"]
shards = 1
io = "$SIPWARD_IO"

[introspection]
url = "$AS_URL"
client_id = "$CLIENT_ID"
client_secret = "$CLIENT_SECRET"
max_inflight = $WINDOW
TOML
sed -e "s|127.0.0.1:$SIPWARD_PORT|127.0.0.1:$SLOW_SIPWARD_PORT|g" -e "s|$AS_URL|$SLOW_AS_URL|" \
    "$work/sipward.toml" > "$work/sipward-slow.toml"

# Forward mode: the same, relaying what passes to a bare responder that answers as a core would.
{
    sed -e "s/127.0.0.1:$SIPWARD_PORT/127.0.0.1:$FWD_PORT/" "$work/sipward.toml"
    printf '\n[forward]\nupstream = "udp:127.0.0.1:%s"\n' "$FWD_BARE_PORT"
} > "$work/sipward-forward.toml"

# ---------------------------------------------------------------------------------------------
# Servers. Each is started in the background, pinned, and waited for.
# $1: port, $2: log name, rest: extra mock-as arguments
start_mock_as() {
    local port=$1 name=$2
    shift 2
    local c="taskset -c $AS_CPU $LOAD mock-as --listen 127.0.0.1:$port --tokens $users --client-id $CLIENT_ID --client-secret $CLIENT_SECRET $*"
    record "$c"
    $c 2> "$work/$name.log" &
    pids+=("$!")
    wait_for_line "$work/$name.log" "mock-as listening" $! || die "$name did not start"
}

# $1: config, $2: log name
start_sipward() {
    local c="taskset -c $SERVER_CPU $SIPWARD --config $work/$1 --log-level info"
    record "$c"
    $c 2> "$work/$2.log" &
    pids+=("$!")
    wait_for_line "$work/$2.log" "sipward ready" $! || die "$2 did not start"
    sipward_io=$(grep 'sipward ready' "$work/$2.log" | grep -o 'io_uring\|epoll' | tail -1)
}

# Kamailio forwarding to the echoing bare responder, from this repository's kamailio-forward.cfg.in.
start_kamailio_forward() {
    local cfg=$work/kamailio-forward.cfg basic
    basic=$(printf '%s:%s' "$CLIENT_ID" "$CLIENT_SECRET" | base64 -w0)
    sed -e "s|@AS_URL@|$AS_URL|" -e "s|@AS_BASIC@|$basic|" -e "s|@LISTEN@|udp:127.0.0.1:$KAM_FWD_PORT|" \
        -e "s|@CHILDREN@|1|" -e "s|@UPSTREAM@|sip:127.0.0.1:$FWD_BARE_PORT|" \
        "$here/kamailio-forward.cfg.in" > "$cfg"
    local c="taskset -c $SERVER_CPU kamailio -f $cfg -DD -E"
    record "$c"
    $c > "$work/kamailio-forward.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_for_port "$KAM_FWD_PORT" udp "$pid" || { tail -20 "$work/kamailio-forward.log" >&2; return 1; }
}

# $1: udp or tcp
start_kamailio() {
    local proto=$1 port=$KAM_UDP_PORT
    [ "$proto" = tcp ] && port=$KAM_TCP_PORT
    local c="taskset -c $SERVER_CPU $peers/run-kamailio.sh $AS_URL $CLIENT_ID $CLIENT_SECRET $proto:127.0.0.1:$port 1"
    record "$c"
    $c > "$work/kamailio-$proto.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local ok=0
    wait_for_port "$port" "$proto" "$pid" && ok=1
    # run-kamailio.sh renders its cfg into a temporary file (mktemp --suffix=.cfg); remove it on exit.
    local cfg
    cfg=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- -f | tail -1 || true)
    [ -n "$cfg" ] || cfg=$(grep -o 'config file /tmp/tmp\.[A-Za-z0-9]*\.cfg' "$work/kamailio-$proto.log" | head -1 | sed 's/^config file //' || true)
    case $cfg in /tmp/tmp.*.cfg) kam_cfgs+=("$cfg") ;; esac
    if [ $ok -eq 0 ]; then
        tail -20 "$work/kamailio-$proto.log" >&2
        return 1
    fi
}

# $1: port, $2: log name, $3: CPU, rest: more bare-responder arguments
start_bare() {
    local port=$1 name=$2 cpu=$3
    shift 3
    local c="taskset -c $cpu $LOAD bare-responder --listen 127.0.0.1:$port $*"
    record "$c"
    $c 2> "$work/$name.log" &
    pids+=("$!")
    wait_for_line "$work/$name.log" "bare-responder listening" $! || die "$name did not start"
}

# ---------------------------------------------------------------------------------------------
# Load. $1: result name, $2: run number, rest: register arguments.
run_register() {
    local name=$1 run=$2
    shift 2
    local c="taskset -c $LOAD_CPU $LOAD register --tokens $users --warmup-s $WARMUP --duration-s $DURATION $*"
    record "$c --json"
    log "$name run $run: register $*"
    if ! fgrun timeout $RUN_LIMIT $c --json > "$work/$name.$run.json" 2> "$work/$name.$run.err"; then
        log "$name run $run failed: $(tail -3 "$work/$name.$run.err")"
        rm -f "$work/$name.$run.json"
    fi
}

# $1: result name, $2: run number, $3: introspection URL
run_as_bench() {
    local name=$1 run=$2 url=$3
    local c="taskset -c $SERVER_CPU $LOAD as-bench --url $url --concurrency $WINDOW --warmup-s $WARMUP --duration-s $DURATION --client-id $CLIENT_ID --client-secret $CLIENT_SECRET --new-tokens-for $users"
    record "$c --json"
    log "$name run $run"
    if ! fgrun timeout $RUN_LIMIT $c --json > "$work/$name.$run.json" 2> "$work/$name.$run.err"; then
        log "$name run $run failed: $(tail -3 "$work/$name.$run.err")"
        rm -f "$work/$name.$run.json"
    fi
}

as_stats() { python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())' \
    "http://127.0.0.1:$AS_PORT/stats" 2>/dev/null || echo '{}'; }

# Receive buffer (rb) and drops (d, cumulative) of each server's UDP socket, from `ss`.
udp_socket_stats() {
    local when=$1 name port line
    for name in sipward:$SIPWARD_PORT kamailio:$KAM_UDP_PORT bare:$BARE_PORT; do
        port=${name#*:}
        line=$(ss -Huamn "sport = :$port" 2>/dev/null | grep -o 'skmem:([^)]*)' | head -1 || true)
        [ -n "$line" ] && printf '%s %s %s\n' "$when" "${name%%:*}" "$line" >> "$work/udp-sockets.txt"
    done
    return 0
}

start_mock_as "$AS_PORT" mock-as
start_sipward sipward.toml sipward
start_bare "$BARE_PORT" bare "$SERVER_CPU"
kam_udp=0 kam_tcp=0 kam_fwd=0
if [ -z "$kam_note" ]; then
    if start_kamailio udp; then kam_udp=1; else kam_note="Kamailio UDP did not start (see its log)."; fi
    if start_kamailio tcp; then kam_tcp=1; else kam_note="$kam_note Kamailio TCP did not start (see its log)."; fi
fi
if [ "$FORWARD" = 1 ]; then
    start_bare "$FWD_BARE_PORT" bare-forward "$FWD_UPSTREAM_CPU" --echo-headers
    start_sipward sipward-forward.toml sipward-forward
    if [ -z "$kam_note" ]; then
        if start_kamailio_forward; then kam_fwd=1; else kam_note="$kam_note Kamailio forward did not start (see its log)."; fi
    fi
fi
log "work directory: $work"

# Phase 1: closed loop, cached tokens. The systems take turns within each round, so that a
# disturbance on the machine spreads over all of them instead of hitting one; sipward and the bare
# responder go back to back, so that each round's ratio of the two (reported per round) compares
# runs a few seconds apart on a host whose other tenants come and go.
for r in $(seq 1 "$RUNS"); do
    run_register sipward-udp "$r" --target 127.0.0.1:$SIPWARD_PORT --window $WINDOW
    run_register bare-udp "$r" --target 127.0.0.1:$BARE_PORT --window $WINDOW
    run_register sipward-tcp "$r" --target 127.0.0.1:$SIPWARD_PORT --window $WINDOW --transport tcp --connections $CONNECTIONS
    [ $kam_udp -eq 1 ] && run_register kamailio-udp "$r" --target 127.0.0.1:$KAM_UDP_PORT --window $WINDOW
    [ $kam_tcp -eq 1 ] && run_register kamailio-tcp "$r" --target 127.0.0.1:$KAM_TCP_PORT --window $WINDOW --transport tcp --connections $CONNECTIONS
    if [ "$FORWARD" = 1 ]; then
        run_register sipward-fwd-udp "$r" --target 127.0.0.1:$FWD_PORT --window $WINDOW
        [ $kam_fwd -eq 1 ] && run_register kamailio-fwd-udp "$r" --target 127.0.0.1:$KAM_FWD_PORT --window $WINDOW
    fi
done
as_stats > "$work/as-stats.cached.json"
udp_socket_stats closed-loop

# Phase 2: every token new, sipward against mock-as; then mock-as alone with as many connections.
for r in $(seq 1 "$RUNS"); do
    run_register sipward-allmiss "$r" --target 127.0.0.1:$SIPWARD_PORT --window $WINDOW --new-share 1.0
    run_as_bench as-bench "$r" "$AS_URL"
done
as_stats > "$work/as-stats.end-of-miss.json"

# Phase 2b: the same against a slow authorization server (a real one answers in milliseconds, and
# serves far fewer introspections per core than mock-as): a second mock-as with SLOW_AS_MS of
# latency, and a second sipward pointing at it.
if [ "$SLOW_AS_MS" -gt 0 ]; then
    start_mock_as "$SLOW_AS_PORT" mock-as-slow --latency-ms "$SLOW_AS_MS"
    start_sipward sipward-slow.toml sipward-slow
    for r in $(seq 1 "$RUNS"); do
        run_register sipward-allmiss-slow "$r" --target 127.0.0.1:$SLOW_SIPWARD_PORT --window $WINDOW --new-share 1.0
        run_as_bench as-bench-slow "$r" "$SLOW_AS_URL"
    done
fi

# Phase 3: open loop at 80 % of sipward's median closed-loop UDP throughput, sipward and bare.
rate=$(python3 - "$work" <<'PY'
import glob, json, statistics, sys
v = []
for f in glob.glob(sys.argv[1] + "/sipward-udp.*.json"):
    try:
        v.append(json.load(open(f))["throughput_per_s"])
    except Exception:
        pass
print(int(0.8 * statistics.median(v)) if v else 0)
PY
)
if [ "$rate" -gt 0 ]; then
    for r in $(seq 1 "$RUNS"); do
        run_register sipward-rate "$r" --target 127.0.0.1:$SIPWARD_PORT --rate "$rate"
        run_register bare-rate "$r" --target 127.0.0.1:$BARE_PORT --rate "$rate"
    done
else
    log "no sipward UDP throughput measured; open-loop phase skipped"
fi

udp_socket_stats end

# ---------------------------------------------------------------------------------------------
# Report.
model=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
nproc_=$(nproc)
kernel=$(uname -r)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "?")
dirty=""
if [ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]; then dirty=" (with uncommitted changes)"; fi
rmem=$(sysctl -n net.core.rmem_max 2>/dev/null || echo "?")
export C_WORK=$work C_RUNS=$RUNS C_DURATION=$DURATION C_WARMUP=$WARMUP C_WINDOW=$WINDOW \
    C_CONNECTIONS=$CONNECTIONS C_RATE=$rate C_NPROC=$nproc_ C_MODEL=$model C_KERNEL=$kernel \
    C_SERVER_CPU=$SERVER_CPU C_LOAD_CPU=$LOAD_CPU C_FWD_UPSTREAM_CPU=$FWD_UPSTREAM_CPU C_AS_CPU=$AS_CPU C_KAM_NOTE=$kam_note \
    C_KAM_VERSION=$kam_version C_SIPWARD_IO=${sipward_io:-?} C_COMMIT=$commit C_DIRTY=$dirty C_RMEM=$rmem \
    C_SLOW_AS_MS=$SLOW_AS_MS C_FORWARD=$FORWARD C_SKIP_KAMAILIO=$SKIP_KAMAILIO
python3 - > "$OUT" <<'PY'
import json
import os
import re
import statistics

E = os.environ
work = E["C_WORK"]


def load(name):
    out = []
    for i in range(1, int(E["C_RUNS"]) + 1):
        try:
            out.append(json.load(open(f"{work}/{name}.{i}.json")))
        except (OSError, ValueError):
            pass
    return out


def med(runs, f):
    v = [f(r) for r in runs]
    return statistics.median(v) if v else None


def thr(r):
    return r["throughput_per_s"]


def p(q):
    return lambda r: r["latency_us"][q]


def non200(r):
    return sum(n for s, n in r.get("status", {}).items() if s != "200")


def fail(r):
    return r.get("timeouts", 0) + r.get("errors", 0)


def fmt(x, unit=""):
    if x is None:
        return "–"
    if unit == "ms":
        return f"{x / 1000:.2f}"
    return f"{x:,.0f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


rows = [
    ("sipward, cached tokens", "UDP", "sipward-udp"),
    ("sipward, cached tokens", f"TCP ×{E['C_CONNECTIONS']}", "sipward-tcp"),
    ("Kamailio 5.6, 1 child, cached tokens", "UDP", "kamailio-udp"),
    ("Kamailio 5.6, 1 child, cached tokens", f"TCP ×{E['C_CONNECTIONS']}", "kamailio-tcp"),
    ("bare recvmmsg/sendmmsg responder", "UDP", "bare-udp"),
    ("sipward forward mode, cached tokens → bare responder (headers echoed)", "UDP", "sipward-fwd-udp"),
    ("Kamailio 5.6 forward(), 1 child, cached tokens → bare responder", "UDP", "kamailio-fwd-udp"),
    ("sipward, every token new (all-miss)", "UDP", "sipward-allmiss"),
    (f"mock-as alone (as-bench, {E['C_WINDOW']} connections)", "HTTP/1.1", "as-bench"),
    (f"sipward, all-miss, mock-as with {E['C_SLOW_AS_MS']} ms latency", "UDP", "sipward-allmiss-slow"),
    (f"mock-as with {E['C_SLOW_AS_MS']} ms latency alone (as-bench, {E['C_WINDOW']} connections)", "HTTP/1.1", "as-bench-slow"),
]
# Phases switched off are left out of the report; one that ran without a result says so.
off = set()
if int(E["C_SLOW_AS_MS"]) <= 0:
    off |= {"sipward-allmiss-slow", "as-bench-slow"}
if E["C_FORWARD"] != "1":
    off |= {"sipward-fwd-udp", "kamailio-fwd-udp"}
if E["C_SKIP_KAMAILIO"] == "1":
    off |= {"kamailio-udp", "kamailio-tcp", "kamailio-fwd-udp"}
rows = [row for row in rows if row[2] not in off]
res = {key: load(key) for _, _, key in rows}
res["sipward-rate"] = load("sipward-rate")
res["bare-rate"] = load("bare-rate")

L = []
w = L.append
w("# sipward comparison\n")
w(f"Closed loop, window {E['C_WINDOW']}, REGISTER with 8 users' bearer tokens, "
  f"{E['C_RUNS']} run(s) of {E['C_DURATION']} s measured after {E['C_WARMUP']} s warm-up; "
  "medians over the runs (each column separately); the last column has each run's answers/s "
  "(p50/p99 ms). "
  "Latency in milliseconds, from send to answer, measured by the load generator.\n")
w("| system | transport | answers/s | p50 ms | p99 ms | non-200 | timeouts + errors | runs: answers/s (p50/p99 ms) |")
w("|---|---|---:|---:|---:|---:|---:|---|")
for label, tr, key in rows:
    runs = res[key]
    if not runs:
        w(f"| {label} | {tr} | no result | | | | | |")
        continue
    raw = "; ".join(f"{fmt(thr(r))} ({fmt(p('p50')(r), 'ms')}/{fmt(p('p99')(r), 'ms')})" for r in runs)
    w(f"| {label} | {tr} | {fmt(med(runs, thr))} | {fmt(med(runs, p('p50')), 'ms')} | "
      f"{fmt(med(runs, p('p99')), 'ms')} | {sum(non200(r) for r in runs)} | "
      f"{sum(fail(r) for r in runs)} | {raw} |")
w("")

rate = int(E["C_RATE"] or 0)
w(f"Open loop at {rate:,} requests/s (80 % of sipward's median UDP answers/s above), cached tokens, UDP:\n")
w("| system | answers/s | p50 ms | p99 ms | p99.9 ms | non-200 | timeouts + errors + dropped | runs: answers/s (p50/p99 ms) |")
w("|---|---:|---:|---:|---:|---:|---:|---|")
for label, key in (("sipward", "sipward-rate"), ("bare responder", "bare-rate")):
    runs = res[key]
    if not runs:
        w(f"| {label} | no result | | | | | | |")
        continue
    raw = "; ".join(f"{fmt(thr(r))} ({fmt(p('p50')(r), 'ms')}/{fmt(p('p99')(r), 'ms')})" for r in runs)
    w(f"| {label} | {fmt(med(runs, thr))} | {fmt(med(runs, p('p50')), 'ms')} | "
      f"{fmt(med(runs, p('p99')), 'ms')} | {fmt(med(runs, p('p999')), 'ms')} | "
      f"{sum(non200(r) for r in runs)} | {sum(fail(r) + r.get('dropped', 0) for r in runs)} | {raw} |")
w("")


def m(key, f=thr):
    return med(res[key], f) if res[key] else None


w("Ratios (of medians):\n")
w("| ratio | value |")
w("|---|---:|")
ratios = [
    ("sipward / Kamailio, UDP answers/s", "sipward-udp", "kamailio-udp"),
    ("sipward / Kamailio, TCP answers/s", "sipward-tcp", "kamailio-tcp"),
    ("sipward / bare responder, UDP answers/s", "sipward-udp", "bare-udp"),
    ("sipward forward / sipward respond, UDP answers/s (target ≥ 0.80)", "sipward-fwd-udp", "sipward-udp"),
    ("sipward forward / Kamailio forward, UDP answers/s (target ≥ 2)", "sipward-fwd-udp", "kamailio-fwd-udp"),
    ("sipward all-miss / mock-as alone (as-bench), answers/s", "sipward-allmiss", "as-bench"),
    (f"sipward all-miss / mock-as alone, both with {E['C_SLOW_AS_MS']} ms AS latency, answers/s",
     "sipward-allmiss-slow", "as-bench-slow"),
]
for label, a, b in ratios:
    if a not in off and b not in off:
        w(f"| {label} | {ratio(m(a), m(b))} |")
w(f"| sipward p99 / bare p99 at {rate:,}/s | {ratio(m('sipward-rate', p('p99')), m('bare-rate', p('p99')))} |")
w("")


def by_round(name):
    out = {}
    for i in range(1, int(E["C_RUNS"]) + 1):
        try:
            out[i] = json.load(open(f"{work}/{name}.{i}.json"))
        except (OSError, ValueError):
            pass
    return out


w("Paired by round (each round's ratio of the two systems, measured within a minute of each other, "
  "sipward and the bare responder back to back; the median of those ratios is less at the mercy "
  "of a host that is busier for one system's turns than for the other's):\n")
w("| ratio | per round | median |")
w("|---|---|---:|")
for label, a, b in ratios[:3]:
    if a in off or b in off:
        continue
    ra, rb = by_round(a), by_round(b)
    paired = [thr(ra[i]) / thr(rb[i]) for i in sorted(ra) if i in rb and thr(rb[i])]
    if paired:
        per = ", ".join(f"{x:.2f}" for x in paired)
        w(f"| {label} | {per} | {statistics.median(paired):.2f} |")
w("")

bad = []
for key in ("sipward-udp", "sipward-tcp", "kamailio-udp", "kamailio-tcp", "bare-udp", "sipward-rate", "bare-rate",
            "sipward-fwd-udp", "kamailio-fwd-udp"):
    for i, r in enumerate(res.get(key, []), 1):
        if non200(r) or fail(r):
            bad.append(f"{key} run {i}: status {r.get('status')}, timeouts {r.get('timeouts')}, "
                       f"errors {r.get('errors')}, dropped {r.get('dropped', 0)}")
w("Checks: every cached-token request must be answered 200 (sipward: 200 with the Contacts; Kamailio's "
  "cfg: 200 with a Contact, 401 for a bad token; the bare responder: 200).\n")
if bad:
    w("**Not every cached-token request got a 200 in time:**\n")
    for b in bad:
        w(f"- {b}")
else:
    w("- every cached-token request of every run was answered 200, with no timeout or error")
w("")
w("All-miss status (every request one introspection; 200 expected, 503 when sipward's `max_inflight` is "
  "reached):\n")
for key, label in (("sipward-allmiss", "sipward all-miss"), ("as-bench", "as-bench"),
                   ("sipward-allmiss-slow", "sipward all-miss, slow AS"), ("as-bench-slow", "as-bench, slow AS")):
    for i, r in enumerate(res.get(key, []), 1):
        extra = f", active {r['active']}" if "active" in r else ""
        w(f"- {label} run {i}: status {r.get('status')}, timeouts {r.get('timeouts')}, "
          f"errors {r.get('errors')}{extra}")
w("")


def stats(name):
    try:
        return json.load(open(f"{work}/{name}"))
    except (OSError, ValueError):
        return {}


sc, se = stats("as-stats.cached.json"), stats("as-stats.end-of-miss.json")
w(f"mock-as counters after the cached-token phase: {sc or 'unavailable'}; after the all-miss phase "
  f"(all-miss runs and as-bench): {se or 'unavailable'}.\n")

try:
    lines = open(f"{work}/udp-sockets.txt").read().split("\n")
except OSError:
    lines = []
sock = {}
for ln in lines:
    m = re.match(r"(\S+) (\S+) skmem:\(.*\brb(\d+).*\bd(\d+)\)", ln)
    if m:
        sock[(m.group(1), m.group(2))] = (int(m.group(3)), int(m.group(4)))
if sock:
    parts = []
    for name in ("sipward", "kamailio", "bare"):
        a, b = sock.get(("closed-loop", name)), sock.get(("end", name))
        if a or b:
            rb = (a or b)[0]
            parts.append(f"{name} (buffer {rb // 1024} KiB): {a[1] if a else '?'} after the closed-loop phase, "
                         f"{b[1] if b else '?'} at the end")
    w("Datagrams dropped because a server's UDP receive buffer was full (`ss -uam` counter `d`, cumulative; "
      "a dropped request is a timeout in `register`): " + "; ".join(parts) + ".\n")

w("## Machine and placement\n")
w(f"- nproc {E['C_NPROC']}, CPU {E['C_MODEL']}, kernel {E['C_KERNEL']}, net.core.rmem_max {E['C_RMEM']}")
w(f"- sipward commit {E['C_COMMIT']}{E.get('C_DIRTY', '')}, io driver {E['C_SIPWARD_IO']}, 1 shard")
w(f"- servers (sipward, Kamailio, bare responder) on CPU {E['C_SERVER_CPU']} (`taskset -c {E['C_SERVER_CPU']}`; "
  "sipward's introspection thread and every Kamailio process there too)")
w(f"- load generator (`register`) on CPU {E['C_LOAD_CPU']}")
w(f"- mock-as (1 tokio thread, one instance for every run) on CPU {E['C_AS_CPU']}; for the all-miss runs "
  f"it shares that core with the load generator")
w(f"- as-bench on CPU {E['C_SERVER_CPU']}: it takes sipward's place as mock-as's client, so mock-as runs "
  "where it ran during sipward's all-miss runs")
if E.get("C_KAM_VERSION"):
    w(f"- Kamailio: `{E['C_KAM_VERSION']}`, ../shared/peers/kamailio-introspect.cfg.in via run-kamailio.sh, "
      "children=1, one instance for UDP and one for TCP (the cfg has one `listen`; TCP is on by default "
      "in Kamailio, so `tcp:` in LISTEN gives a TCP listener with 1 TCP worker)")
w("- forward mode (unless FORWARD=0): sipward with `[forward] upstream` = a second bare responder run with "
  "`--echo-headers` (the forward-mode rows' 200s are the bare responder's, relayed), and Kamailio with "
  "loadtest/kamailio-forward.cfg.in (the respond-mode peer's introspection and cache, then `forward()`) "
  f"to the same responder, which runs on CPU {E['C_FWD_UPSTREAM_CPU']} (it stands for a core on another host)")
if E.get("C_KAM_NOTE"):
    w(f"- {E['C_KAM_NOTE']}")
w("- the systems take turns within each round (sipward UDP, TCP, Kamailio UDP, TCP, bare), all of them "
  "idle on the server core while another is measured")
w("")
w("## Commands\n")
w("```")
w(open(f"{work}/commands.txt").read().rstrip())
w("```")
print("\n".join(L))
PY
cat "$OUT"
log "written to $OUT; raw results in $work"
