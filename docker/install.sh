#!/bin/sh
# Install eagrl into /opt/venv exactly as the Makefile's setup does (same pip/setuptools/wheel pins, the
# same constraints.txt), but not editable. Usage: install.sh [--deps-only] [EXTRAS].
#   --deps-only  the dependencies alone, from pyproject.toml and constraints.txt (an empty project stands in
#                for the sources), so that the image layer holding them is rebuilt only when those two change;
#                a second call without it then installs the project itself.
# DROP_PINS="a|b" leaves those packages' pins out of the constraints, for the GPU images only: every vLLM
# release pins fastapi<0.137, below the CPU lock's fastapi (see docker/README.md).
# TORCH_INDEX: an extra index for torch (the CPU wheel index for the CPU images); empty: none.
# docker/local/ (git-ignored, filled by `make images`): *.whl files pip may take (the CPU torch wheel), and
# ca-certificates.crt, the CA bundle pip trusts (the build machine's, where a proxy re-signs TLS).
set -eu
DEPS_ONLY=""
if [ "${1:-}" = "--deps-only" ]; then DEPS_ONLY=1; shift; fi
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3.11}"
LOCAL="$(dirname "$0")/local"
if ls "$LOCAL"/*.whl >/dev/null 2>&1; then export PIP_FIND_LINKS="$LOCAL"; fi
if [ -f "$LOCAL/ca-certificates.crt" ]; then export PIP_CERT="$LOCAL/ca-certificates.crt"; fi
if [ -n "${TORCH_INDEX:-}" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX"; fi
CONSTRAINTS=constraints.txt
if [ -n "${DROP_PINS:-}" ]; then
  grep -vE "^(${DROP_PINS})==" constraints.txt > /tmp/constraints.txt
  CONSTRAINTS=/tmp/constraints.txt
fi
if [ -n "$DEPS_ONLY" ]; then
  "$PYTHON" -m venv /opt/venv
  /opt/venv/bin/python -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0
  mkdir -p src && touch README.md  # the empty project: its dependencies without its sources
  /opt/venv/bin/python -m pip install -q --no-cache-dir -c "$CONSTRAINTS" ".${EXTRAS:+[$EXTRAS]}"
  rm -rf build ./*.egg-info src/*.egg-info
else
  [ -x /opt/venv/bin/python ] || { echo "error: docker/install.sh: /opt/venv is missing: run install.sh --deps-only first" >&2; exit 1; }
  /opt/venv/bin/python -m pip install -q --no-cache-dir --no-deps --force-reinstall .
  rm -rf build ./*.egg-info src/*.egg-info
  /opt/venv/bin/python -m pip check
fi
