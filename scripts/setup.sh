#!/usr/bin/env bash
# Create or update the project's virtual environments. Idempotent: a venv is
# (re)installed only when its requirements changed.
#   .venv        backend, server and test runner (pyproject.toml, extras "test" and "ray")
#   .venv-bpy5   Blender 5.0 as a module, to test the add-on
#   .venv-bpy45  Blender 4.5 LTS as a module, to test the add-on
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "error: $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())');" \
         "the bpy wheels need Python 3.11: run with PYTHON=python3.11" >&2
    exit 1
fi

# venv DIR INSTALL-ARGS... : create DIR and pip install INSTALL-ARGS unless the stamp says it is current
venv() {
    local dir=$1; shift
    local stamp="$dir/.requirements.sha256"
    local want
    want=$(cat pyproject.toml requirements/*.txt | sha256sum | cut -d' ' -f1)-"$*"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "setting up $dir ..." >&2
    [[ -x "$dir/bin/python" ]] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" > "$stamp"
}

venv .venv -e ".[test,ray]"
venv .venv-bpy5 -r requirements/blender5.txt
venv .venv-bpy45 -r requirements/blender45.txt
