#!/usr/bin/env bash
# Run the torch integration's tests against one or more virtual environments, each with
# its own torch, and print the torch versions that passed.
#
#   python3 -m venv /tmp/t214 && /tmp/t214/bin/pip install torch==2.14.1 numpy
#   tools/torch-versions.sh /tmp/t214 .ci-venv
#
# Each environment gets this checkout installed (with its test extra) and runs
# tests/torch. The exit status is 0 only if every environment passed.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: tools/torch-versions.sh VENV [VENV...]" >&2; exit 2; }

passed=() failed=()
for venv in "$@"; do
    py="$venv/bin/python"
    if [ ! -x "$py" ]; then
        echo "$venv: no python there" >&2
        failed+=("$venv (no python)")
        continue
    fi
    version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) || {
        echo "$venv: torch does not import" >&2
        failed+=("$venv (no torch)")
        continue
    }
    echo "== $venv: torch $version"
    "$py" -m pip install --quiet ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
    # From outside the checkout, so that the installed package is what is tested.
    if (cd /tmp && "$py" -m pytest -q -p no:cacheprovider "$OLDPWD/tests/torch"); then
        passed+=("$version")
    else
        failed+=("$version")
    fi
done
echo "passed: ${passed[*]:-none}"
echo "failed: ${failed[*]:-none}"
[ ${#failed[@]} -eq 0 ]
