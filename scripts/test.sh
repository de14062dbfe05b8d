#!/usr/bin/env bash
# The test command's body (`make test`, after `make setup`): the quality gates, then the suite.
#
# The host role's `bridge` Molecule scenario (tests/integration/test_role_host_molecule.py)
# boots a Debian VM under TCG emulation and bridges its second NIC (about ten minutes, mostly
# one busy CPU). It runs as its own pytest process beside the gates and the main suite, so the
# 2-core machine is used while the main suite waits on its guests; its output is printed after
# the main suite's, and the command fails when any part fails.
#
# The `default` scenario (the whole role: ~350 packages and ~60 module calls of ~5 s each over
# SSH to an emulated CPU, twice for idempotence) takes 25 minutes alone here; beside the rest
# it would push this command to its 45-minute budget: it runs with `make test-host-molecule`.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV_BIN="$PWD/.venv/bin"
HOST_MOLECULE=tests/integration/test_role_host_molecule.py
SCENARIOS=(bridge)
mkdir -p build
declare -A side_pid side_log
for scenario in "${SCENARIOS[@]}"; do
    side_log[$scenario]="$PWD/build/test-host-molecule-$scenario.log"
    "$VENV_BIN/pytest" -p no:cacheprovider --basetemp="$PWD/build/pytest-host-molecule-$scenario" \
        "$HOST_MOLECULE" -k "$scenario" >"${side_log[$scenario]}" 2>&1 &
    side_pid[$scenario]=$!
    echo "test: host role Molecule scenario '$scenario' running beside the main suite" \
        "(pid ${side_pid[$scenario]}, log ${side_log[$scenario]})"
done

make --no-print-directory lint
lint_rc=$?

main_rc=1
if [ "$lint_rc" -eq 0 ]; then
    "$VENV_BIN/pytest" --ignore="$HOST_MOLECULE" tests
    main_rc=$?
else
    echo "test: quality gates failed (rc $lint_rc); the main suite does not run"
fi

side_rc=0
for scenario in "${SCENARIOS[@]}"; do
    echo "test: waiting for the host role Molecule scenario '$scenario' (pid ${side_pid[$scenario]})"
    wait "${side_pid[$scenario]}"
    rc=$?
    echo "=============== host role Molecule scenario '$scenario' (rc $rc) ==============="
    cat "${side_log[$scenario]}"
    [ "$rc" -eq 0 ] || side_rc=$rc
done

if [ "$lint_rc" -ne 0 ] || [ "$main_rc" -ne 0 ] || [ "$side_rc" -ne 0 ]; then
    echo "test: FAILED (gates rc $lint_rc, main suite rc $main_rc, host Molecule rc $side_rc)"
    exit 1
fi
echo "test: all passed"
