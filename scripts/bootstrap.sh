#!/usr/bin/env bash
# Create or refresh the project virtualenv (.venv) so that it matches requirements.txt
# requirements-accuracy.txt, requirements-dev.txt and setup.py. Quick no-op when the stamp inside .venv matches those files.
#
#   bash scripts/bootstrap.sh            # create/refresh when stale
#   FORCE=1 bash scripts/bootstrap.sh    # reinstall even when fresh
#   PYTHON=python3.11 bash scripts/bootstrap.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=.venv
STAMP="$VENV/.rnncast-bootstrap.sha256"

want=$(cat requirements.txt requirements-accuracy.txt requirements-dev.txt setup.py | sha256sum | cut -d' ' -f1)

venv_works() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null
}

if [[ "${FORCE:-0}" != 1 ]] && venv_works && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$want" ]]; then
    exit 0  # fresh
fi

if ! venv_works; then
    python=${PYTHON:-}
    if [[ -z "$python" ]]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null; then python=$candidate; break; fi
        done
    fi
    if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
        echo "bootstrap: need Python >= 3.11 (set PYTHON=...); found: ${python:-none}" >&2
        exit 1
    fi
    echo "bootstrap: creating $VENV with $("$python" --version)" >&2
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
fi

echo "bootstrap: installing requirements into $VENV" >&2
rm -f "$STAMP"  # a failed install below must leave the venv stale
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
"$VENV/bin/python" -m pip install -r requirements.txt
# The statistical peers (statsforecast) of make accuracy: an optional extra for users, tested by make test.
"$VENV/bin/python" -m pip install -r requirements-accuracy.txt
# make lint's formatter, linter and type checker.
"$VENV/bin/python" -m pip install -r requirements-dev.txt
"$VENV/bin/python" -m pip install -e . --no-deps
echo "$want" > "$STAMP"
echo "bootstrap: $VENV is ready" >&2
