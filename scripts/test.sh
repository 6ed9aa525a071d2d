#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need when missing (SIPp
# from Debian's sip-tester; Kamailio, the SIP core behind forward mode; Node.js and, from npm,
# oidc-provider for the real authorization server), then runs every test of the workspace. I/O tests run themselves under both io_uring and epoll.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${missing[*]}"
    # The kamailio package must not start a system-wide Kamailio (it would take 0.0.0.0:5060).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ $made_policy -eq 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi

if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
    npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi

cargo test --workspace --locked
