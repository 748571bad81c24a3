#!/usr/bin/env bash
# Resume the tuned benchmark (inilora bench --preset tuned) in the background, from an isolated copy of the
# code: a detached git worktree at this checkout's HEAD and a copy of .venv, so that editing this checkout or
# pip-installing into .venv cannot change runs in flight (each run records the worktree's commit). Finished
# runs land in this checkout's results/tuned/runs: commit them as they come (git add results/tuned/runs).
# `touch results/tuned/STOP` stops it once the runs in flight have finished (they are kept); killing the
# printed pid's process group stops it at once and loses the runs in flight.
#
#   bash benchmarks/tuned_resume.sh            # WT, VENV, LOG override where the copies and the log go
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
WT=${WT:-$ROOT/../wt-run}
VENV=${VENV:-$ROOT/../venv-run}
LOG=${LOG:-$ROOT/../tuned_run.log}
[ -d "$WT" ] || git -C "$ROOT" worktree add -q --detach "$WT" HEAD
git -C "$WT" checkout -q --detach "$(git -C "$ROOT" rev-parse HEAD)"
[ -x "$VENV/bin/python" ] || cp -a "$ROOT/.venv" "$VENV"
cd "$WT"
PYTHONPATH="$WT/src" setsid nohup "$VENV/bin/python" -m inilora.cli bench --preset tuned \
    --out "$ROOT/results/tuned" --jobs "${JOBS:-2}" --threads 1 >> "$LOG" 2>&1 &
echo "tuned benchmark running: pid $! (code at $(git rev-parse --short HEAD)); log $LOG"
