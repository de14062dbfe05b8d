#!/usr/bin/env bash
# ansible-test sanity needs the collection at .../ansible_collections/virtops/kvm: copy the
# files git knows (tracked, plus untracked ones not ignored) into build/ and run it there.
# Each sanity test runs in ansible-test's own virtualenv with its pinned tools (--venv); the
# changelog test is skipped here because `make changelog-lint` runs antsibull-changelog lint.
# VENV picks the virtualenv whose ansible-test runs (default .venv; scripts/test.sh also runs
# it from .venv-2.16, the oldest ansible-core that meta/runtime.yml's requires_ansible allows).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
DEST="$ROOT/build/sanity-$(basename "$VENV")/ansible_collections/virtops/kvm"
PY=$(basename "$(readlink -f "$VENV/bin/python")" | grep -oE '[0-9]+\.[0-9]+' || true)
PY=${PY:-3.11}

rm -rf "$DEST"
mkdir -p "$DEST"
cd "$ROOT"
git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --files-from=- ./ "$DEST/"
cd "$DEST"
# ansible-test lists the collection's files through git when it finds a repository.
git init -q . && git add -A >/dev/null && git -c user.email=ci@localhost -c user.name=ci commit -qm sanity
exec "$VENV/bin/ansible-test" sanity --venv --python "$PY" --skip-test changelog --color no "$@"
