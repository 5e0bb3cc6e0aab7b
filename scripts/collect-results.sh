#!/usr/bin/env bash
# Copies the small files of a `udit ablate` output folder into a folder meant for git: the
# plan, results.json, results.md and the plot, and per finished or running run its recipe,
# training log and meter scores. No checkpoints, models or samples.
#   scripts/collect-results.sh OUT DEST   (e.g. /work/runs/figure1/out results/figure1)
set -euo pipefail
src=$1
dest=$(mkdir -p "$2" && cd "$2" && pwd)
cd "$src"
for f in plan.json results.json results.md fid-vs-gmacs.png; do
  if [ -e "$f" ]; then cp "$f" "$dest/"; fi
done
find . -path ./.claims -prune -o \( -name recipe.json -o -name log.jsonl -o -name meter.json \) -print |
  while read -r f; do
    mkdir -p "$dest/$(dirname "$f")"
    cp "$f" "$dest/$f"
  done
