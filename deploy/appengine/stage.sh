#!/usr/bin/env bash
# Stages the orders example for App Engine: App Engine deploys the directory
# that holds app.yaml, so this copies the sources and deploy/appengine/* into
# one directory. Usage: deploy/appengine/stage.sh OUTDIR
set -euo pipefail
out="${1:?usage: deploy/appengine/stage.sh OUTDIR}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$out"
cp "$root/pyproject.toml" "$root/README.md" "$out/"
for d in tq sweeper tqtesting examples; do
  rm -rf "${out:?}/$d"
  cp -r "$root/$d" "$out/$d"
done
find "$out" -name __pycache__ -type d -prune -exec rm -rf {} +
cp "$root"/deploy/appengine/{app.yaml,queue.yaml,cron.yaml,requirements.txt} "$out/"
echo "staged in $out: gcloud app deploy $out/app.yaml $out/queue.yaml $out/cron.yaml"
