#!/usr/bin/env bash
# The test command's body (`make test`, after `make setup`): the quality gates, then the suite.
#
# The host role's Molecule scenarios (tests/integration/test_role_host_molecule.py) each boot a
# Debian VM that installs the whole KVM stack under TCG emulation: about 13 minutes apiece,
# mostly one busy vCPU. They run as a second pytest stream next to the gates and the main
# suite, so the 2-core machine is used while the main suite waits on its guests. Their output
# is printed after the main suite's; the command fails when any part fails.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV_BIN="$PWD/.venv/bin"
HOST_MOLECULE=tests/integration/test_role_host_molecule.py
mkdir -p build
side_log="$PWD/build/test-host-molecule.log"

"$VENV_BIN/pytest" -p no:cacheprovider --basetemp="$PWD/build/pytest-host-molecule" \
    "$HOST_MOLECULE" >"$side_log" 2>&1 &
side_pid=$!
echo "test: host role Molecule scenarios running beside the main suite (pid $side_pid, log $side_log)"

make --no-print-directory lint
lint_rc=$?

main_rc=1
if [ "$lint_rc" -eq 0 ]; then
    "$VENV_BIN/pytest" --ignore="$HOST_MOLECULE" tests
    main_rc=$?
else
    echo "test: quality gates failed (rc $lint_rc); the main suite does not run"
fi

echo "test: waiting for the host role Molecule scenarios (pid $side_pid)"
wait "$side_pid"
side_rc=$?
echo "=============== host role Molecule scenarios (rc $side_rc) ==============="
cat "$side_log"

if [ "$lint_rc" -ne 0 ] || [ "$main_rc" -ne 0 ] || [ "$side_rc" -ne 0 ]; then
    echo "test: FAILED (gates rc $lint_rc, main suite rc $main_rc, host Molecule rc $side_rc)"
    exit 1
fi
echo "test: all passed"
