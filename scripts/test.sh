#!/usr/bin/env bash
# The test command's body (`make test`, after `make setup`), in stages that stop at the first
# failure, fastest first:
#
# 1. fast gates (about a minute): ruff, the changelog fragments, collecting every test module
#    (an import error anywhere fails here, not after half an hour), the unit tests, with the
#    pinned ansible-core and again with the oldest one requires_ansible allows (.venv-2.16);
# 2. slow gates (several minutes): ansible-test sanity (both ansible-cores) and ansible-lint.
#    The lab images are built (or found in the cache by recipe hash) beside them, and the host
#    role's two Molecule scenarios start beside them, each as its own stream: `bridge` boots a
#    Debian VM under TCG and bridges its second NIC (about ten minutes, mostly one busy CPU);
#    `default` installs and secures a whole KVM host in a VM (~350 packages and ~60 module
#    calls over SSH to an emulated CPU, twice for idempotence: 25 minutes alone, 50 to 55
#    beside the rest, the longest stream). Their output is printed at the end. A failed gate
#    stops them and ends the run;
# 3. the main suite (integration and lab tests against the real libvirtd, booted guests, the
#    guest role's Molecule scenario), and beside it the multi-host stream: every test marked
#    `multihost` (the namespaced libvirt hosts: migration, TLS, the fleet inventory, the
#    Pacemaker cluster) and every test marked `side_stream` (tests of the local libvirtd that
#    share nothing with the main suite, moved there to balance the two), started once the
#    `bridge` scenario has ended so that no more than three streams share the two cores. The multi-host lab is one per machine (a lock), so
#    its tests are one pytest session of their own. The image module's real build from the
#    archive (3-4 minutes alone, about 15 loaded) runs with `make test-image-build`; here the
#    lab's own images go through the same builder when the cache misses.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV_BIN="$PWD/.venv/bin"
PYTEST=("$VENV_BIN/pytest" -p no:cacheprovider)
HOST_MOLECULE=tests/integration/test_role_host_molecule.py
SCENARIOS=(default bridge)
OLDEST_VENV_BIN="$PWD/.venv-2.16/bin"
mkdir -p build
declare -A side_pid side_log
images_pid=""
started=$SECONDS

say() { echo "test [$(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s]: $*"; }

# Stop what this script started in the background: each stream runs in its own session
# (setsid), so its whole process group goes, and nothing else.
stop_streams() {
    local pid
    for pid in "${side_pid[@]}" $images_pid; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${side_pid[@]}" $images_pid; do
        wait "$pid" 2>/dev/null || true
    done
}

fail() {
    say "FAILED: $*"
    stop_streams
    exit 1
}

say "stage 1: fast gates"
make --no-print-directory ruff || fail "ruff"
make --no-print-directory changelog-lint || fail "changelog fragments"
"${PYTEST[@]}" --collect-only -q tests >build/test-collect.log 2>&1 || {
    tail -40 build/test-collect.log
    fail "collecting the test modules"
}
"${PYTEST[@]}" -q -m "not integration and not lab" tests/unit || fail "unit tests"
"$OLDEST_VENV_BIN/pytest" -p no:cacheprovider -q -m "not integration and not lab" tests/unit ||
    fail "unit tests with ansible-core $("$OLDEST_VENV_BIN/python" -c 'import ansible; print(ansible.__version__)')"

say "stage 2: slow gates, with the lab images and the host role Molecule streams beside them"
setsid bash -c '"$1" -m tests.lab.images build tiny && "$1" -m tests.lab.images build debian' \
    _ "$VENV_BIN/python" >build/test-images.log 2>&1 &
images_pid=$!
for scenario in "${SCENARIOS[@]}"; do
    side_log[$scenario]="$PWD/build/test-host-molecule-$scenario.log"
    setsid "${PYTEST[@]}" --basetemp="$PWD/build/pytest-host-molecule-$scenario" \
        "$HOST_MOLECULE" -k "$scenario" >"${side_log[$scenario]}" 2>&1 &
    side_pid[$scenario]=$!
    say "host role Molecule scenario '$scenario' running beside (pid ${side_pid[$scenario]}," \
        "log ${side_log[$scenario]})"
done
make --no-print-directory sanity || fail "ansible-test sanity"
VENV="$PWD/.venv-2.16" ./scripts/sanity.sh || fail "ansible-test sanity with the oldest ansible-core"
make --no-print-directory ansible-lint || fail "ansible-lint"
wait "$images_pid"
images_rc=$?
images_pid=""
[ "$images_rc" -eq 0 ] || {
    tail -40 build/test-images.log
    fail "building the lab images"
}

say "stage 3: the main suite, and the multi-host stream beside it"
side_log[multihost]="$PWD/build/test-multihost.log"
# waits for the bridge scenario to end: gone, or a zombie until this script reaps it
setsid bash -c 'ended() { local s; s=$(sed "s/^.*) //" "/proc/$1/stat" 2>/dev/null); [ "${s%% *}" = Z ] || [ -z "$s" ]; }
    until ended "$1"; do sleep 5; done; shift; exec "$@"' \
    _ "${side_pid[bridge]}" "${PYTEST[@]}" --basetemp="$PWD/build/pytest-multihost" \
    --ignore="$HOST_MOLECULE" --ignore=tests/unit -m "(multihost or side_stream) and not image_build and not install" \
    tests \
    >"${side_log[multihost]}" 2>&1 &
side_pid[multihost]=$!
say "multi-host stream waiting for 'bridge', then running beside (pid ${side_pid[multihost]}," \
    "log ${side_log[multihost]})"
"${PYTEST[@]}" --ignore="$HOST_MOLECULE" --ignore=tests/unit \
    -m "not image_build and not install and not multihost and not side_stream" tests
main_rc=$?

side_rc=0
for stream in "${SCENARIOS[@]}" multihost; do
    say "waiting for the stream '$stream' (pid ${side_pid[$stream]})"
    wait "${side_pid[$stream]}"
    rc=$?
    echo "=============== stream '$stream' (rc $rc) ==============="
    cat "${side_log[$stream]}"
    [ "$rc" -eq 0 ] || side_rc=$rc
done

if [ "$main_rc" -ne 0 ] || [ "$side_rc" -ne 0 ]; then
    say "FAILED (main suite rc $main_rc, side streams rc $side_rc)"
    exit 1
fi
say "all passed"
