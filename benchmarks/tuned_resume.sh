#!/usr/bin/env bash
# Resume the tuned benchmark (inilora bench --preset tuned, or an arm: PRESET=tuned-4bit) in the background,
# from an isolated copy of the code: a detached git worktree at this checkout's HEAD and a copy of .venv, so that
# editing this checkout or pip-installing into .venv cannot change runs in flight (each run records the
# worktree's commit). Finished runs land in this checkout's results folder (results/tuned, results/tuned_4bit):
# commit them as they come (git add results/tuned/runs). TASKS=a,b runs only those tasks, one after another
# (each task's runs complete before the next starts, so a stopped benchmark leaves whole tasks); METHODS=a,b only
# those methods (--methods).
# `touch results/tuned/STOP` stops it once the runs in flight have finished (they are kept); killing the
# printed pid's process group stops it at once and loses the runs in flight.
#
#   bash benchmarks/tuned_resume.sh                                    # WT, VENV, LOG: where copies and log go
#   PRESET=tuned-4bit TASKS=courses,reviews,tweets bash benchmarks/tuned_resume.sh
#   TASKS=chain_sum,gsm_symbolic METHODS=lora,inilora:svd,pissa,inilora-alpha,inilora-beta,inilora:adam \
#       bash benchmarks/tuned_resume.sh
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
WT=${WT:-$ROOT/../wt-run}
VENV=${VENV:-$ROOT/../venv-run}
LOG=${LOG:-$ROOT/../tuned_run.log}
PRESET=${PRESET:-tuned}
OUT="$ROOT/results/${PRESET//-/_}"
[ -d "$WT" ] || git -C "$ROOT" worktree add -q --detach "$WT" HEAD
git -C "$WT" checkout -q --detach "$(git -C "$ROOT" rev-parse HEAD)"
[ -x "$VENV/bin/python" ] || cp -a "$ROOT/.venv" "$VENV"
cd "$WT"
rm -f "$OUT/STOP"  # a request left from an earlier sitting does not stop this one
run() {  # one bench invocation
    PYTHONPATH="$WT/src" "$VENV/bin/python" -m inilora.cli bench --preset "$PRESET" "$@" ${METHODS:+--methods "$METHODS"} \
        --out "$OUT" --jobs "${JOBS:-2}" --threads 1
}
export -f run; export PRESET OUT WT VENV JOBS METHODS
# with TASKS, one invocation per task, in order, until one is stopped (STOP)
setsid nohup bash -c 'for t in ${0//,/ }; do [ -e "$OUT/STOP" ] && break; [ "$t" = all ] && run || run --tasks "$t"; done' \
    "${TASKS:-all}" >> "$LOG" 2>&1 < /dev/null &
echo "$PRESET benchmark running: pid $! (code at $(git rev-parse --short HEAD)); log $LOG; results in $OUT"
