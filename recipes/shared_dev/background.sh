#!/usr/bin/env bash
# Start, or continue, the background training of the default model (issue 29): cycles of conf/recool.yaml, each a
# 1,000-step run whose rate climbs over 50 steps and falls to 0, warm from the end of the cycle before.
#   bash recipes/shared_dev/background.sh            # in the background; logs in runs/cycles/NNN/train.log
#   echo 2 > runs/cycles/THREADS                     # both cores while nobody works (read every 20 steps)
#   echo 1 > runs/cycles/THREADS                     # one core while you work
#   kill $(cat runs/cycles/pid)                      # stops the cycle after the step, with a checkpoint, and the loop
# Since lineage 13,104 every branch of the constant-rate run lost words across gender, and every re-cool of the
# shipped model kept them (recipes/shared_dev/README.md): each cycle's end is a candidate, and their average
# (soup.py) is one too. A stopped cycle resumes where it stopped. The first cycle on a machine without runs/cycles
# starts from recipes/shared_dev/resume_point (the last cycle's end as the last session kept it; each finished
# cycle rewrites it), else from checkpoints/default.
# Needs the cache: python recipes/shared_dev/prepare.py --data ../shared/data --out cache/shared_dev --frame-features
set -euo pipefail
cd "$(dirname "$0")/../.."
root=runs/cycles
mkdir -p "$root"
if [ -f "$root/pid" ] && kill -0 "$(cat "$root/pid")" 2>/dev/null; then
  echo "background training already runs (pid $(cat "$root/pid"))" >&2
  exit 1
fi
[ -f "$root/THREADS" ] || echo 1 > "$root/THREADS"
vckit=".venv/bin/vckit"
[ -x "$vckit" ] || vckit="vckit"
python=".venv/bin/python"
[ -x "$python" ] || python="python"
end=step-000001000  # conf/recool.yaml: train.steps

loop() {
  while true; do
    local last="" n=1 d
    for d in "$root"/[0-9][0-9][0-9]; do
      [ -d "$d" ] || continue
      n=$((10#$(basename "$d") + 1))
      [ -d "$d/$end" ] && last="$d/$end"
    done
    local cur
    cur="$root/$(printf %03d $((n - 1)))"
    if [ $n -eq 1 ] || [ -d "$cur/$end" ]; then  # start a new cycle from the last end
      cur="$root/$(printf %03d "$n")"
    fi
    local init=${last:-checkpoints/default}
    [ -z "$last" ] && [ -f recipes/shared_dev/resume_point/config.json ] && init=recipes/shared_dev/resume_point
    mkdir -p "$cur"
    ln -sf ../THREADS "$cur/THREADS"
    "$vckit" -v train --config recipes/shared_dev/conf/recool.yaml --set "train.out_dir=$cur" --resume --init-from "$init" \
      --quiet "$@" >> "$cur/train.log" 2>&1 &
    echo $! > "$root/pid"
    wait $! || true
    [ -d "$cur/$end" ] || { echo "$(date -u +%FT%TZ) $cur stopped before its end" >> "$root/cycles.log"; break; }
    "$python" recipes/shared_dev/resume_point.py --run "$cur" --last >> "$root/cycles.log" 2>&1 || true
    echo "$(date -u +%FT%TZ) $cur finished (from $init)" >> "$root/cycles.log"
  done
  rm -f "$root/pid"
}

(trap '' HUP; loop "$@") > /dev/null 2>&1 < /dev/null &
sleep 1
echo "background training started (cycles in $root, pid $(cat "$root/pid" 2>/dev/null || echo '?'), $(cat "$root/THREADS") thread(s))"
