#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need when missing (SIPp
# from Debian's sip-tester; Node.js and, from npm, oidc-provider for the real authorization server),
# then runs every test of the workspace. I/O tests run themselves under both io_uring and epoll.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
    npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi

cargo test --workspace --locked
