# Shared by scripts/run and scripts/test: a virtual environment that matches the pinned requirements.
# Sourced, not run. Needs only python3 (3.11 or newer) on the machine.

PYTHON="${PYTHON:-python3}"
VENV=".venv"

ensure_venv() {
    local requirements="$1"
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "error: $PYTHON not found; install Python 3.11 or newer." >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: Python 3.11 or newer is needed ($("$PYTHON" --version) found)." >&2
        exit 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "Creating the virtual environment in $VENV ..."
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the pinned requirements changed since the last install.
    local stamp="$VENV/.installed-$(basename "$requirements")"
    local wanted
    wanted="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
    # requirements-dev.txt includes requirements.txt: a test venv serves scripts/run too.
    local dev_stamp="$VENV/.installed-requirements-dev.txt"
    if [ -f "$dev_stamp" ] && [ "$(cat "$dev_stamp")" = "$wanted" ]; then
        return
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
        echo "Installing $requirements ..."
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$wanted" > "$stamp"
    fi
}
