#!/bin/sh
# Install eagrl into /opt/venv exactly as the Makefile's setup does (same pip/setuptools/wheel pins, the
# same constraints.txt), but not editable. Usage: install.sh [EXTRAS]. DROP_PINS="a|b" leaves those
# packages' pins out of the constraints, for the GPU images only: every vLLM release pins fastapi<0.137,
# below the CPU lock's fastapi (see docker/README.md).
set -eu
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3.11}"
"$PYTHON" -m venv /opt/venv
/opt/venv/bin/python -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0
CONSTRAINTS=constraints.txt
if [ -n "${DROP_PINS:-}" ]; then
  grep -vE "^(${DROP_PINS})==" constraints.txt > /tmp/constraints.txt
  CONSTRAINTS=/tmp/constraints.txt
fi
/opt/venv/bin/python -m pip install -q --no-cache-dir -c "$CONSTRAINTS" ".${EXTRAS:+[$EXTRAS]}"
/opt/venv/bin/python -m pip check
