#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need when missing
# (SIPp from Debian's sip-tester), then runs every test of the workspace. I/O tests run themselves
# under both io_uring and epoll.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo test --workspace --locked
