#!/usr/bin/env bash
# Runs every test of htex on this machine, after setting up what the tests need:
#   - the commands the tests run (Debian packages, installed when missing and apt-get works);
#   - a Python venv with msgpack (warm runners) and pyzmq (a libzmq peer for the CURVE tests);
#   - as root: a real single-host Slurm (scripts/slurm/up.sh), stopped again on exit when this
#     script started it; network namespaces for the network-fault tests; a small tmpfs for the
#     journal's full-disk test.
# Then: the Python warm runner's tests, `cargo test --workspace --release`, the unit tests again in
# debug (overflow checks and debug assertions on), and the vendored zmq.rs's own tests.
#
# Every test that needs a capability this script set up is told to fail rather than skip
# (HTEX_REQUIRE). Without root, the Slurm and network-namespace tests skip and say so; GPU
# tests skip without a GPU. Extra arguments go to the release `cargo test` (e.g. a test name).
#
#   HTEX_TEST_VENV=DIR   where the venv lives (default target/test-venv)
#   HTEX_TEST_SLURM=0    never start Slurm (its tests then skip)
set -euo pipefail

cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
is_root=0
[[ $(id -u) == 0 ]] && is_root=1

step "system packages"
# Commands the tests and the example task file run, as `command:debian-package`. `ip`
# (iproute2) lets htex/tests/network_faults.rs cut a manager off in a network namespace;
# promtool and prometheus check and scrape the metrics endpoint, and tmux shows the live view
# (htex/tests/monitoring.rs).
required=(sh:dash awk:mawk seq:coreutils wc:coreutils paste:coreutils uname:coreutils ip:iproute2
    promtool:prometheus prometheus:prometheus tmux:tmux)
missing=()
for entry in "${required[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
if ((${#missing[@]} == 0)); then
    echo "nothing to install"
elif ((is_root)) && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # No package's service starts on install (prometheus's would): the tests start their own.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    { apt-get update -q && apt-get install -y --no-install-recommends "${missing[@]}"; } \
        || echo "warning: apt-get failed; continuing without ${missing[*]}"
    if ((made_policy)); then rm -f "$policy"; fi
else
    echo "warning: cannot install ${missing[*]} (needs root and apt-get); tests that run them will fail"
fi

step "python: a venv with msgpack and pyzmq"
venv=${HTEX_TEST_VENV:-target/test-venv}
if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv"
fi
# pyzmq's wheels bundle libzmq with libsodium: tests/tests/curve.rs checks htex's CURVE against
# it, in both roles.
"$venv/bin/pip" install --quiet --disable-pip-version-check msgpack pyzmq
HTEX_TEST_PYTHON=$(cd "$venv/bin" && pwd)/python
export HTEX_TEST_PYTHON
requires=(python)
(($(nproc) >= 2)) && requires+=(cpus2)
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && requires+=(prometheus)
command -v tmux >/dev/null 2>&1 && requires+=(tmux)

slurm_started=0
stop_slurm() {
    if ((slurm_started)); then
        step "stopping the Slurm this script started"
        scripts/slurm/down.sh || true
    fi
}
trap stop_slurm EXIT
if ((is_root)) && [[ ${HTEX_TEST_SLURM:-1} != 0 ]]; then
    step "slurm: munged, slurmctld and 3 slurmd on this host (scripts/slurm/up.sh)"
    if ! sinfo -h >/dev/null 2>&1; then
        slurm_started=1
    fi
    scripts/slurm/up.sh
    requires+=(slurm netns root)
elif ((is_root)); then
    echo "HTEX_TEST_SLURM=0: the Slurm tests will skip"
    requires+=(netns root)
else
    echo "not root: the Slurm, network-namespace and full-disk (tmpfs) tests will skip (run as root to include them)"
fi
if [[ -z ${HTEX_REQUIRE:-} ]]; then
    HTEX_REQUIRE=$(IFS=,; echo "${requires[*]}")
fi
export HTEX_REQUIRE
echo "HTEX_REQUIRE=$HTEX_REQUIRE HTEX_TEST_PYTHON=$HTEX_TEST_PYTHON"

step "python warm runner tests (python/tests)"
PYTHONPATH=python "$HTEX_TEST_PYTHON" -m unittest discover -s python/tests

step "cargo test --workspace --release"
cargo test --workspace --release --no-fail-fast "$@"

step "cargo test --workspace --lib (debug: overflow checks and debug assertions on)"
cargo test --workspace --lib --no-fail-fast

step "the vendored zmq.rs's own tests (third_party/zeromq, outside the workspace)"
CARGO_TARGET_DIR=target/zeromq cargo test --manifest-path third_party/zeromq/Cargo.toml --lib

step "all tests passed"
