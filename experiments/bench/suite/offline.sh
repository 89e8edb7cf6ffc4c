#!/usr/bin/env bash
# The device suite on the GPU machine, in one call of the device tool (see the README's "Accelerators"):
#   run(command="bash experiments/bench/suite/offline.sh", carry=[".device"], timeout_s=600)
# Installs the wheels prepared by `python -m experiments.bench.suite.prepare` (packages the machine lacks) into
# /tmp/site, then runs the suite; its results go to $OUT (the device tool returns that folder).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .device/wheels ] && ls .device/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/wheels/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "note: no .device/wheels (run python -m experiments.bench.suite.prepare and carry .device)" >&2
fi
export PYTHONUNBUFFERED=1
exec python3 -m experiments.bench.suite "$@"
