#!/usr/bin/env bash
# ansible-lint with the production profile on the roles and playbooks (config: .ansible-lint).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.venv/collections"
# ansible-lint installs the collection it finds at the project root into ANSIBLE_HOME; keep
# that copy inside build/ so an older copy in ~/.ansible never shadows the checkout.
export ANSIBLE_HOME="$ROOT/build/ansible-home"
targets=()
for dir in roles playbooks; do
    if find "$dir" -name '*.yml' -print -quit 2>/dev/null | grep -q .; then
        targets+=("$dir")
    fi
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "ansible-lint: no roles or playbooks yet"
    exit 0
fi
exec env NO_COLOR=1 "$ROOT/.venv/bin/ansible-lint" --offline --nocolor --profile production "${targets[@]}"
