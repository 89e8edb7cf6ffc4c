#!/usr/bin/env bash
# The accelerator suite on a machine without network, from the offline bundle that
# `python -m experiments.bench.suite.prepare` made in .device/ (see experiments/bench/suite/prepare.py):
#   bash experiments/bench/suite/offline.sh --out DIR [--parts ...] [--deadline_s N]
# Installs .device/wheels (the packages such a machine lacks) into /tmp/site, then runs the suite with ARGS;
# the training parts read the bundle's dataset cache.
set -uo pipefail
cd "$(dirname "$0")/../../.."
if [ -d .device/wheels ] && ls .device/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/wheels/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "note: no .device/wheels (run python -m experiments.bench.suite.prepare where there is network)" >&2
fi
export PYTHONUNBUFFERED=1
exec python3 -m experiments.bench.suite "$@"
