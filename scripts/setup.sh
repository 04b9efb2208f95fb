#!/usr/bin/env bash
# Creates .venv/ at the repository root with metaclinic and a working learn2learn 0.2.0.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt "$@"; }

if [ ! -x "$venv/bin/python" ]; then
    "$python" -c 'import sys; assert sys.version_info >= (3, 10), "metaclinic needs Python >= 3.10"'
    "$python" -m venv "$venv"
fi

# The registry's standard torch + torchvision (with CUDA libraries); runs on CPU as well.
pip_install torch torchvision

# learn2learn 0.2.0 ships Cython-generated C that no longer compiles on Python 3.11 (upstream issue #413).
# Regenerate the C from the .pyx files it ships, with Cython 3, and install that tree.
if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("learn2learn") == "0.2.0"' 2>/dev/null; then
    pip_install cython
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        learn2learn==0.2.0 -d "$work"
    tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
    src="$work/learn2learn-0.2.0"
    rm -rf "$src/.eggs"
    for pyx in "$src"/learn2learn/data/*.pyx; do
        "$venv/bin/cython" -3 "$pyx" -o "${pyx%.pyx}.c"
    done
    # --no-deps: its declared dependencies include gsutil and qpth, which nothing we import needs;
    # the ones it imports (numpy, scipy, gym, torchvision, requests, tqdm) come with metaclinic below.
    pip_install --no-deps --no-build-isolation "$src"
fi

# --no-warn-conflicts: pip would otherwise report learn2learn's declared gsutil and qpth as missing;
# they serve its dataset downloaders and MetaOptNet, which metaclinic does not use.
pip_install --no-warn-conflicts -e ".[dev]"
"$venv/bin/python" -W ignore -c 'import learn2learn, metaclinic; print("metaclinic environment ready:", ".venv/")' \
    2> >(grep -v -i "gym" >&2)
