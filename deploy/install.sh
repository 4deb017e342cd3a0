#!/usr/bin/env bash
# The one install step of the container image, also run by CI in a fresh
# virtual environment so the image's install is tested without a container engine.
#   deploy/install.sh [PIP-TARGET]    (default: the project with no extras)
# The images extra (--image-hash pdq) builds pdqhash from source, which needs a C++ compiler: where
# there is none and apt-get can install one (a slim Debian image, as root), it is installed for the
# build and removed after it, so the image carries no compiler.
set -euo pipefail
target="${1:-.}"
added_compiler=""
if [[ "$target" == *images* ]] && ! command -v g++ >/dev/null && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends g++ >/dev/null
  added_compiler=yes
fi
python -m pip install --no-cache-dir --upgrade pip >/dev/null
python -m pip install --no-cache-dir "$target"
if [[ -n "$added_compiler" ]]; then
  apt-get purge -y -qq --auto-remove g++ >/dev/null
  rm -rf /var/lib/apt/lists/*
fi
streamfilter --version
if [[ "$target" == *images* ]]; then
  python -c "import pdqhash, PIL.Image"
fi
