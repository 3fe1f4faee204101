#!/usr/bin/env bash
# Start, or continue, the background training of the default model's configuration (issue 29):
#   bash recipes/shared_dev/background.sh            # in the background; log in runs/forever/train.log
#   echo 2 > runs/forever/THREADS                    # both cores while nobody works (read every 20 steps)
#   echo 1 > runs/forever/THREADS                    # one core while you work
#   kill $(cat runs/forever/pid)                     # stops after the step and saves a checkpoint
# It resumes runs/forever's last checkpoint. Where there is none (a fresh machine: runs/ is not in git), it
# warm-starts from recipes/shared_dev/resume_point, the run's averaged weights as the last session left them
# (python recipes/shared_dev/resume_point.py writes it before a session ends), else from checkpoints/default.
# Needs the cache: python recipes/shared_dev/prepare.py --data ../shared/data --out cache/shared_dev --frame-features
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/forever
mkdir -p "$out"
if [ -f "$out/pid" ] && kill -0 "$(cat "$out/pid")" 2>/dev/null; then
  echo "background training already runs (pid $(cat "$out/pid"))" >&2
  exit 1
fi
[ -f "$out/THREADS" ] || echo 1 > "$out/THREADS"
vckit=".venv/bin/vckit"
[ -x "$vckit" ] || vckit="vckit"
init=checkpoints/default
[ -f recipes/shared_dev/resume_point/config.json ] && init=recipes/shared_dev/resume_point
nohup "$vckit" -v train --config recipes/shared_dev/conf/forever.yaml --resume --init-from "$init" --quiet "$@" >> "$out/train.log" 2>&1 &
echo $! > "$out/pid"
echo "background training started (pid $!, $(cat "$out/THREADS") thread(s)); log: $out/train.log"
