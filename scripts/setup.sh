#!/usr/bin/env bash
# Create or update the project's virtual environments. Idempotent: a venv is
# (re)installed only when its requirements changed.
#   .venv         backend, server and test runner (pyproject.toml, extras "test" and "ray"), Python 3.11
#   .venv-bpy42   Blender 4.2 LTS as a module (Python 3.11), to test the add-on
#   .venv-bpy45   Blender 4.5 LTS as a module (Python 3.11)
#   .venv-bpy52   Blender 5.2 LTS as a module (Python 3.13)
#   .venv-bpy53   Blender 5.3 as a module (Python 3.13)
# Arguments name the venvs to set up (default: all of them).
# Python 3.11: $PYTHON (default python3). Python 3.13: $PYTHON313, else pyenv's, else python3.13 on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

# check_python PYTHON MAJOR.MINOR HINT : fail with HINT unless PYTHON runs and is that version
check_python() {
    if ! "$1" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$2'.split('.'))))" 2>/dev/null; then
        local found
        found=$("$1" -c 'import platform; print("Python " + platform.python_version())' 2>/dev/null || echo "not runnable")
        echo "error: $1 is $found; the venvs that need it want Python $2: $3" >&2
        exit 1
    fi
}

find_python313() {
    if [[ -n "${PYTHON313:-}" ]]; then echo "$PYTHON313"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
        local root
        root=$(pyenv root)
        for candidate in "$root"/versions/3.13*/bin/python3.13; do
            [[ -x "$candidate" ]] && { echo "$candidate"; return; }
        done
    else
        for candidate in "$HOME"/.pyenv/versions/3.13*/bin/python3.13; do
            [[ -x "$candidate" ]] && { echo "$candidate"; return; }
        done
    fi
    if command -v python3.13 >/dev/null 2>&1; then command -v python3.13; return; fi
    echo "error: Python 3.13 not found (Blender 5.1 and newer run 3.13): install it (e.g. pyenv install 3.13)" \
         "or set PYTHON313=/path/to/python3.13" >&2
    exit 1
}

# venv DIR PYTHON STAMPED-FILES INSTALL-ARGS... : create DIR with PYTHON and pip install INSTALL-ARGS
# unless its stamp (a hash of STAMPED-FILES, a space-separated list, and the arguments) says it is current
venv() {
    local dir=$1 python=$2 files=$3; shift 3
    local stamp="$dir/.requirements.sha256"
    local want
    # shellcheck disable=SC2086  # the file list is meant to split
    want=$(cat $files | sha256sum | cut -d' ' -f1)-"$*"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "setting up $dir ..." >&2
    [[ -x "$dir/bin/python" ]] || "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
    echo "$want" > "$stamp"
}

ALL=(.venv .venv-bpy42 .venv-bpy45 .venv-bpy52 .venv-bpy53)
WANTED=("$@")
[[ ${#WANTED[@]} -gt 0 ]] || WANTED=("${ALL[@]}")

PYTHON=${PYTHON:-python3}
for name in "${WANTED[@]}"; do
    case "$name" in
        .venv|.venv-bpy42|.venv-bpy45) check_python "$PYTHON" 3.11 "run with PYTHON=python3.11"; break ;;
    esac
done

for name in "${WANTED[@]}"; do
    case "$name" in
        # pip 25.3+: the install test packs it for the backend environments (blender_addon/installer.py PLAN_PIP)
        .venv)       venv .venv "$PYTHON" pyproject.toml "pip>=25.3" -e ".[test,ray]" ;;
        .venv-bpy42) venv "$name" "$PYTHON" requirements/blender42.txt -r requirements/blender42.txt ;;
        .venv-bpy45) venv "$name" "$PYTHON" requirements/blender45.txt -r requirements/blender45.txt ;;
        .venv-bpy52|.venv-bpy53)
            python313=$(find_python313)
            check_python "$python313" 3.13 "set PYTHON313=/path/to/python3.13"
            req=requirements/blender${name#.venv-bpy}.txt
            venv "$name" "$python313" "$req" -r "$req" ;;
        *) echo "error: unknown venv $name (one of: ${ALL[*]})" >&2; exit 2 ;;
    esac
done
