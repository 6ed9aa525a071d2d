#!/usr/bin/env bash
# A CPU flamegraph of sipward under load: builds the `profiling` profile with frame pointers, runs
# sipward (1 shard, pinned to CPU 0) with mock-as as its introspection server, drives it with
# `sipward-load register` from CPU 1 for a bounded time, samples sipward with `perf record`, and
# writes an SVG next to this script (tuning/*.svg and tuning/perf.data* are gitignored).
#
# usage: tuning/flamegraph.sh     (root, or perf_event_paranoid <= 1 for your user; installs
#                                  linux-perf with apt and inferno with cargo when missing)
# env:   DURATION (10 s sampled)  MODE (cached: tokens in the cache | allmiss: every token new |
#        tcp: cached over TCP)  WINDOW (256)  FREQ (999 Hz)  CALLGRAPH (fp | dwarf)
#        SERVER_CPU (0)  LOAD_CPU (1)  PORT_BASE (15160)  OUT (tuning/sipward-MODE.svg)
#        PROFILE_TARGET_DIR (target/flamegraph: RUSTFLAGS differ from the normal builds, so they get
#        their own target directory instead of invalidating the usual one)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10}
MODE=${MODE:-cached}
WINDOW=${WINDOW:-256}
FREQ=${FREQ:-999}
CALLGRAPH=${CALLGRAPH:-fp}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-15160}
OUT=${OUT:-$here/sipward-$MODE.svg}
PROFILE_TARGET_DIR=${PROFILE_TARGET_DIR:-$root/target/flamegraph}
SIP_PORT=$PORT_BASE
AS_PORT=$((PORT_BASE + 3000))

log() { printf '[flamegraph] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

case $MODE in cached | allmiss | tcp) ;; *) die "MODE must be cached, allmiss or tcp" ;; esac
case $CALLGRAPH in fp) cg=(-g) ;; dwarf) cg=("--call-graph=dwarf,32768") ;; *) die "CALLGRAPH must be fp or dwarf" ;; esac

work=$(mktemp -d /tmp/sipward-flamegraph.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ $rc -eq 0 ]; then rm -rf "$work"; else log "logs kept in $work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Tools.
if ! command -v perf >/dev/null || ! perf --version >/dev/null 2>&1; then
    log "installing linux-perf"
    sudo_ apt-get update -q >&2
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >&2
fi
export PATH=$HOME/.cargo/bin:$PATH
if ! command -v inferno-collapse-perf >/dev/null || ! command -v inferno-flamegraph >/dev/null; then
    log "installing inferno (cargo install inferno --locked)"
    cargo install inferno --locked >&2
fi
if [ "$(id -u)" -ne 0 ] && [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt 1 ]; then
    die "perf_event_paranoid is $(cat /proc/sys/kernel/perf_event_paranoid): run as root or 'sysctl kernel.perf_event_paranoid=1'"
fi

# Build: the profiling profile (release + full debug info) with frame pointers, so that perf can walk
# the stacks without copying them (--call-graph fp). The load generator comes from the same target
# directory.
cd "$root"
log "building (profile profiling, -C force-frame-pointers=yes) into $PROFILE_TARGET_DIR"
RUSTFLAGS="${RUSTFLAGS:-} -C force-frame-pointers=yes" CARGO_TARGET_DIR=$PROFILE_TARGET_DIR \
    cargo build --profile profiling --locked -p sipward -p sipward-load >&2
SIPWARD=$PROFILE_TARGET_DIR/profiling/sipward
LOAD=$PROFILE_TARGET_DIR/profiling/sipward-load

users=$work/users.csv
{
    echo "SEQUENTIAL"
    for i in 0 1 2 3 4 5 6 7; do echo "user$i;tok-user$i-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"; done
} > "$users"
cat > "$work/sipward.toml" <<TOML
[server]
udp = ["127.0.0.1:$SIP_PORT"]
tcp = ["127.0.0.1:$SIP_PORT"]
shards = 1

[introspection]
url = "http://127.0.0.1:$AS_PORT/introspect"
client_id = "load"
client_secret = "load-secret"
max_inflight = $WINDOW
TOML

wait_for_line() {
    local i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; return 1; }
        i=$((i + 1)); [ $i -le 200 ] || return 1
        sleep 0.1
    done
}

taskset -c "$LOAD_CPU" "$LOAD" mock-as --listen 127.0.0.1:$AS_PORT --tokens "$users" \
    --client-id load --client-secret load-secret 2> "$work/mock-as.log" &
pids+=("$!")
wait_for_line "$work/mock-as.log" "mock-as listening" $! || die "mock-as did not start"
taskset -c "$SERVER_CPU" "$SIPWARD" --config "$work/sipward.toml" --log-level warn 2> "$work/sipward.log" &
spid=$!
pids+=("$spid")
for _ in $(seq 50); do ss -Hlnu "sport = :$SIP_PORT" | grep -q . && break; sleep 0.1; done
kill -0 $spid 2>/dev/null || { cat "$work/sipward.log" >&2; die "sipward did not start"; }

load_args=(--target "127.0.0.1:$SIP_PORT" --tokens "$users" --window "$WINDOW")
case $MODE in
allmiss) load_args+=(--new-share 1.0) ;;
tcp) load_args+=(--transport tcp --connections 100) ;;
esac
# Load for 1 s more than the sample on each side, so that perf sees steady state only.
log "load: register ${load_args[*]} for $((DURATION + 2)) s; sampling sipward for $DURATION s"
timeout $((DURATION + 30)) taskset -c "$LOAD_CPU" "$LOAD" register "${load_args[@]}" \
    --warmup-s 1 --duration-s $((DURATION + 1)) > "$work/register.txt" 2>&1 &
lpid=$!
pids+=("$lpid")
sleep 1
# cpu-clock: a software event, so it works where the hardware counters are not exposed (VMs).
perf record -e cpu-clock -F "$FREQ" "${cg[@]}" -p "$spid" -o "$here/perf.data" -- sleep "$DURATION" \
    > "$work/perf-record.log" 2>&1 || { cat "$work/perf-record.log" >&2; die "perf record failed"; }
rm -f "$here/perf.data.old"
wait $lpid || true
grep -E 'received|status|timeouts|latency' "$work/register.txt" >&2 || true

perf script -i "$here/perf.data" 2> /dev/null > "$work/perf.script"
inferno-collapse-perf < "$work/perf.script" > "$work/folded.txt"
inferno-flamegraph --title "sipward, $MODE, 1 shard, $DURATION s, cpu-clock ${FREQ} Hz, call graph $CALLGRAPH" \
    < "$work/folded.txt" > "$OUT"
samples=$(grep -o '([0-9]* samples)' "$work/perf-record.log" | tr -dc 0-9 || true)
log "wrote $OUT (${samples:-?} samples; perf.data kept in $here for 'perf report -i $here/perf.data')"

# Top frames by self time.
perf report -i "$here/perf.data" --no-children --sort symbol --stdio > "$work/report.txt" 2> /dev/null || true
echo "top frames by self time (share of samples):"
grep -E '^ +[0-9.]+%' "$work/report.txt" | head -15 | sed -E 's/ +- +- *$//' || true

# Where the time goes, inclusive: the share of samples whose stack contains each frame.
share() {
    awk -v pat="$1" '{ w = $NF; tot += w; if ($0 ~ pat) s += w } END { if (tot) printf "%5.1f%%", 100 * s / tot }' \
        "$work/folded.txt"
}
echo "self time by object (the sipward binary holds sipward, monoio, mimalloc, hyper and tokio):"
perf report -i "$here/perf.data" --no-children --sort dso --stdio 2> /dev/null \
    | grep -E '^ +[0-9.]+%' | head -5 | sed -E 's/ +- +- *$//' || true
echo "inclusive shares (samples whose stack contains the frame):"
printf '  %s  %s\n' \
    "$(share 'io_uring_enter')" "io_uring_enter (io_uring driver: submitting and completing socket operations)" \
    "$(share 'epoll_wait|__x64_sys_recvfrom|__x64_sys_sendto|__x64_sys_recvmsg|__x64_sys_sendmsg|__x64_sys_writev')" \
    "epoll-style system calls (the epoll driver, and the introspection client's writes)" \
    "$(share 'udp_sendmsg|tcp_sendmsg')" "sending (on loopback this includes delivering to the receiver's socket)" \
    "$(share 'udp_recvmsg|tcp_recvmsg')" "receiving" \
    "$(share 'sipward::sip::scan')" "sipward's scanner" \
    "$(share 'sipward::sip::reply')" "sipward's response writer" \
    "$(share 'mi_|_mi_')" "mimalloc" \
    "$(share 'sipward::token::http|hyper::')" "the introspection / userinfo client (on the shards)"
# Stacks that perf walked down to the thread's entry; a low share means broken unwinding, and
# CALLGRAPH=dwarf will do better.
whole=$(awk -F';' '{ w = $NF; sub(/.* /, "", w); tot += w; if ($2 ~ /^(start_thread|clone3|__clone3|clone|_start)$/) s += w }
    END { if (tot) printf "%.1f%%", 100 * s / tot }' "$work/folded.txt")
echo "stacks unwound down to the thread entry: $whole"
