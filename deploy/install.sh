#!/usr/bin/env bash
# The one install step of the container image, also run by CI in a fresh
# virtual environment so the image's install is tested without a container engine.
#   deploy/install.sh [PIP-TARGET]    (default: the project with no extras)
set -euo pipefail
target="${1:-.}"
python -m pip install --no-cache-dir --upgrade pip >/dev/null
python -m pip install --no-cache-dir "$target"
streamfilter --version
