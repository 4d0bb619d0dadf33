#!/bin/sh
# Reads TensorBoard event files back with the `tensorboard` package from PyPI (its EventAccumulator, the reader
# TensorBoard itself uses) and prints every scalar as one JSON object: {"tag": [[step, value, wall_time], ...]}.
# ctl/tests/history_exports.rs checks `fedgectl history --tensorboard` with it.
#
#   scripts/tensorboard-read.sh LOGDIR     read the event files in LOGDIR
#   scripts/tensorboard-read.sh --prepare  only create the virtual environment (CI does this before the tests)
#
# The virtual environment is created once, in $FEDGE_TENSORBOARD_VENV (default: target/tensorboard-venv of this
# repository), with `python3 -m venv` and `pip install tensorboard==$FEDGE_TENSORBOARD_VERSION` (default 2.21.0).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv=${FEDGE_TENSORBOARD_VENV:-$here/../target/tensorboard-venv}
version=${FEDGE_TENSORBOARD_VERSION:-2.21.0}
if ! "$venv/bin/python" -c "import tensorboard, sys; sys.exit(tensorboard.__version__ != '$version')" 2>/dev/null; then
  echo "tensorboard-read: installing tensorboard $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "tensorboard==$version" >&2
fi
if [ "${1:-}" = "--prepare" ]; then
  exit 0
fi
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 LOGDIR | --prepare" >&2
  exit 2
fi
exec "$venv/bin/python" - "$1" <<'PY'
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={SCALARS: 0})
acc.Reload()
scalars = {tag: [[e.step, e.value, e.wall_time] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(scalars, sort_keys=True))
PY
