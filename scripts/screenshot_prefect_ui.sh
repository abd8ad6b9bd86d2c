#!/usr/bin/env bash
# Redo docs/img/prefect-run.png: the Prefect UI's page of a completed `pipeline` flow run.
#
# Starts a Prefect server (own PREFECT_HOME in a temporary folder, bound to 127.0.0.1), clones the
# repository's committed files into a temporary folder with the tiny world's params
# (tests/tiny_world.py whole_pipeline_params: every stage of dvc.yaml in a few minutes), runs the
# `pipeline` flow against that server, takes a headless Chromium screenshot of the run's page and
# stops the server. Needs chromium (`apt-get install -y chromium`); about 7 min on 2 busy cores.
#
# usage: scripts/screenshot_prefect_ui.sh [OUTPUT.png]   (default docs/img/prefect-run.png)
#        PORT=4300 scripts/screenshot_prefect_ui.sh       (if 4200 is taken)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=$(realpath -m "${1:-$ROOT/docs/img/prefect-run.png}")
PORT=${PORT:-4200}
WORK=$(mktemp -d)
export PREFECT_HOME=$WORK/prefect-home PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 RAY_USAGE_STATS_ENABLED=0
export GX_ANALYTICS_ENABLED=false PATH=$(dirname "$PY"):$PATH

"$(dirname "$PY")/prefect" server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 120); do
  curl -sf "$PREFECT_API_URL/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 1
done

git clone -q "$ROOT" "$WORK/repo"
cd "$WORK/repo"
PYTHONPATH=$WORK/repo:$ROOT/tests "$PY" - "$ROOT" "$WORK/run_id" <<'EOF'
import sys
from pathlib import Path

import yaml
from tiny_world import whole_pipeline_params

from flows.pipeline import pipeline

Path("params.yaml").write_text(yaml.safe_dump(whole_pipeline_params(Path(sys.argv[1])), sort_keys=False))
state = pipeline(repo_dir=".", return_state=True)
if not state.is_completed():
    sys.exit(f"the pipeline run did not complete: {state.message}")
Path(sys.argv[2]).write_text(str(state.state_details.flow_run_id))
EOF
RUN_ID=$(cat "$WORK/run_id")

chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$WORK/chromium" --window-size=1600,1000 \
  --virtual-time-budget=15000 --screenshot="$OUT" "http://127.0.0.1:$PORT/runs/flow-run/$RUN_ID" 2>/dev/null
echo "flow run $RUN_ID: $OUT"
