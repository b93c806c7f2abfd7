#!/usr/bin/env bash
# Install the platform into .venv at exactly requirements.lock's versions: with uv (itself
# pinned in the lock, installed from PyPI by the venv's pip) in seconds, with pip when uv
# cannot be had or fails. Both compile the bytecode at install (uv does not by default):
# where PYTHONDONTWRITEBYTECODE is set, every interpreter would otherwise compile its
# imports again, 8.7 s instead of 3.8 s for the code location's imports on this machine.
#
#   scripts/install.sh                 # the platform (README command 1)
#   scripts/install.sh dev             # and the test tools (README command 2); any extra
#   PYTHON=/usr/bin/python3 VENV=.venv-debian scripts/install.sh dev   # another Python
#   ML_INSTALL_WITH=pip scripts/install.sh                             # pip only
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}
target=.
if [ -n "${1:-}" ]; then target=".[$1]"; fi

# A clear refusal instead of a resolver error about numpy: the lock's scikit-learn,
# numpy, scipy, matplotlib, fastapi, schemathesis and onnxruntime need Python >= 3.11.
if ! "$python" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; then
    echo "install: $("$python" -V 2>&1) ($python) is not supported: ml-assets needs" \
         "Python 3.11, 3.12 or 3.13 (choose one with PYTHON=/path/to/python3.X)" >&2
    exit 2
fi
if ! "$python" -m venv "$venv"; then
    echo "install: '$python -m venv' failed (above): on Debian or Ubuntu install the" \
         "python3-venv package (apt), or choose another Python with PYTHON=..." >&2
    exit 1
fi
if [ "${ML_INSTALL_WITH:-uv}" = uv ]; then
    if "$venv/bin/pip" install -q --disable-pip-version-check -c requirements.lock uv \
        && "$venv/bin/uv" pip install --compile-bytecode --python "$venv/bin/python" \
            -c requirements.lock -e "$target"; then
        exit 0
    fi
    echo "install: uv failed (above); installing with pip instead" >&2
fi
"$venv/bin/pip" install --disable-pip-version-check -c requirements.lock -e "$target"
