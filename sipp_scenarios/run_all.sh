#!/usr/bin/env bash
# Runs every SIPp client scenario in this directory against a running sipward in respond mode,
# configured like examples/quickstart.toml (tokens from examples/tokens.toml, which users.csv and
# users_wrong.csv match; default [auth] methods REGISTER and INVITE; [respond] status 200).
#
#   sipp_scenarios/run_all.sh HOST:PORT [udp|tcp] [SCENARIO.xml ...]
#
# Prints one line per scenario (PASS or FAIL), then "N passed, M failed" alone on the last line, and
# exits 0 only when every scenario passed (1 when one failed, 2 on a usage error or without sipp).
# For a failed scenario it prints SIPp's exit code, its unexpected-message log (-trace_err) and the
# end of its message trace, and keeps the logs in a temporary directory whose path it prints.
#
# Environment: SIPP (the sipp binary, default "sipp"), SIPP_CALLS (calls per scenario, default 3),
# SIPP_TIMEOUT (seconds per scenario, default 20), SIPP_LOCAL_IP (address SIPp puts in Via and
# Contact, default 127.0.0.1; sipward answers the source address anyway), SIPP_KEEP_LOGS=1 (keep the
# logs of passing runs too).
#
# uas_forward.xml is not run: it is the UAS for the forward-mode tests, and respond mode never
# forwards anything to it.

set -u

usage() {
    echo "usage: $0 HOST:PORT [udp|tcp] [SCENARIO.xml ...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
target=$1
shift
case $target in
*:[0-9]*) ;;
*) usage ;;
esac
transport=udp
if [ $# -ge 1 ]; then
    transport=$1
    shift
fi
case $transport in
udp) mode=u1 ;;
tcp) mode=t1 ;;
*) usage ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sipp=${SIPP:-sipp}
calls=${SIPP_CALLS:-3}
timeout_s=${SIPP_TIMEOUT:-20}
local_ip=${SIPP_LOCAL_IP:-127.0.0.1}
case $calls$timeout_s in
*[!0-9]*) echo "SIPP_CALLS and SIPP_TIMEOUT must be whole numbers" >&2; exit 2 ;;
esac

if ! command -v "$sipp" >/dev/null 2>&1; then
    echo "$sipp not found (Debian package sip-tester)" >&2
    exit 2
fi
# A hard bound on each run in case SIPp itself hangs past its own -timeout.
if command -v timeout >/dev/null 2>&1; then
    bound=(timeout --kill-after=5 "$((timeout_s + 10))")
else
    bound=()
fi

# scenario | injection file | what passing means
scenarios=(
    "register_bearer.xml|users.csv|REGISTER with a valid token: 200 with each Contact and its expiry"
    "register_no_token.xml|users.csv|REGISTER without a token: 401 Bearer realm=\"...\" without error"
    "register_invalid_token.xml|users.csv|REGISTER with an unknown token: 401 error=\"invalid_token\""
    "register_wrong_user.xml|users_wrong.csv|REGISTER with another user's token: 401 error=\"invalid_request\""
    "invite_bearer_uac.xml|users.csv|INVITE with a valid token: 200, ACK, BYE, 200"
    "invite_no_token.xml|users.csv|INVITE without a token: 401 Bearer challenge, ACK, no answer to it"
    "options_ping.xml|users.csv|OPTIONS without a token: 200 with a To tag"
)

selected() {
    [ $# -eq 1 ] && return 0
    local want=$1 s
    shift
    for s in "$@"; do
        [ "$s" = "$want" ] || [ "$s" = "${want%.xml}" ] && return 0
    done
    return 1
}

for s in "$@"; do
    found=0
    for entry in "${scenarios[@]}"; do
        name=${entry%%|*}
        if [ "$s" = "$name" ] || [ "$s" = "${name%.xml}" ]; then found=1; fi
    done
    if [ $found = 0 ]; then
        echo "unknown scenario $s (uas_forward.xml is not a client scenario)" >&2
        exit 2
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/sipward-sipp.XXXXXX")
passed=0
failed=0

explain() {
    case $1 in
    0) echo "all calls succeeded" ;;
    1) echo "at least one call failed" ;;
    97) echo "SIPp stopped by an internal command" ;;
    99) echo "no call was processed" ;;
    124 | 137) echo "killed after ${timeout_s}s + 10s" ;;
    255) echo "SIPp fatal error, or its -timeout reached" ;;
    *) echo "unexpected exit code" ;;
    esac
}

for entry in "${scenarios[@]}"; do
    IFS='|' read -r scenario inf meaning <<<"$entry"
    selected "$scenario" "$@" || continue
    name=${scenario%.xml}-$transport
    # Run from the log directory so nothing SIPp writes lands in the caller's directory.
    (
        cd "$work" &&
            "${bound[@]}" "$sipp" -sf "$here/$scenario" -inf "$here/$inf" \
                -m "$calls" -t "$mode" -i "$local_ip" -default_behaviors all,-bye \
                -timeout "${timeout_s}s" -timeout_error -nostdin \
                -trace_err -error_file "$work/$name.errors.log" \
                -trace_msg -message_file "$work/$name.messages.log" \
                -trace_screen -screen_file "$work/$name.screen.log" \
                "$target" </dev/null >"$work/$name.out" 2>&1
    )
    rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        printf 'PASS  %-28s %s  %s calls  %s\n' "$scenario" "$transport" "$calls" "$meaning"
        continue
    fi
    failed=$((failed + 1))
    printf 'FAIL  %-28s %s  sipp exit %s (%s); expected: %s\n' \
        "$scenario" "$transport" "$rc" "$(explain $rc)" "$meaning"
    {
        echo "---- $scenario over $transport: sipp $here/$scenario -inf $here/$inf -m $calls -t $mode $target"
        if [ -s "$work/$name.errors.log" ]; then
            echo "---- unexpected messages and failed checks ($work/$name.errors.log):"
            # SIPp writes its error events without line breaks; put each on its own line.
            sed -E 's/([0-9]{4}-[0-9]{2}-[0-9]{2}\t[0-9:.]+\t[0-9.]+: )/\n\1/g' "$work/$name.errors.log"
            echo
        else
            echo "---- no error log; SIPp output:"
            grep -v '^[[:space:]]*$' "$work/$name.out" | tail -n 25
        fi
        if [ -s "$work/$name.messages.log" ]; then
            echo "---- last messages ($work/$name.messages.log):"
            tail -n 40 "$work/$name.messages.log"
        fi
        echo "---- end of $scenario"
    } >&2
done

if [ $failed -eq 0 ] && [ "${SIPP_KEEP_LOGS:-0}" != 1 ]; then
    rm -rf "$work"
else
    echo "logs: $work" >&2
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ] && [ $passed -gt 0 ]
