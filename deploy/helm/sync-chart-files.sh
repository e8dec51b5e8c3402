#!/usr/bin/env bash
# Copies the artefacts the chart ships into deploy/helm/kapso-exporter/files/, where Helm can
# read them (.Files.Get sees only the chart's own directory):
#
#   alerts/*.yml       -> files/alerts/      (the PrometheusRule's groups)
#   dashboards/*.json  -> files/dashboards/  (one ConfigMap per dashboard)
#
# The copies are byte-for-byte and never edited by hand: edit alerts/ or dashboards/ and run
#
#   deploy/helm/sync-chart-files.sh           # rewrite the copies, remove stale ones
#   deploy/helm/sync-chart-files.sh --check   # exit 1 if a copy is missing, stale or different
#
# tests/helm_chart.rs fails when the copies drift from their sources.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
files="$repo/deploy/helm/kapso-exporter/files"
check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

status=0
sync() { # sync SOURCE_DIR PATTERN TARGET_DIR
  local src="$repo/$1" pattern="$2" dst="$files/$3"
  $check || mkdir -p "$dst"
  local f name
  for f in "$src"/$pattern; do
    [ -e "$f" ] || { echo "sync-chart-files: nothing matches $1/$pattern" >&2; exit 1; }
    name="$(basename "$f")"
    if $check; then
      cmp -s "$f" "$dst/$name" || { echo "files/$3/$name differs from $1/$name" >&2; status=1; }
    else
      cp "$f" "$dst/$name"
    fi
  done
  for f in "$dst"/*; do
    [ -e "$f" ] || continue
    name="$(basename "$f")"
    if [ ! -e "$src/$name" ]; then
      if $check; then
        echo "files/$3/$name has no source in $1/" >&2; status=1
      else
        rm -f "$f"
      fi
    fi
  done
}
sync alerts '*.yml' alerts
sync dashboards '*.json' dashboards
if [ $status -ne 0 ]; then
  echo "the chart's files/ are out of date: run deploy/helm/sync-chart-files.sh" >&2
fi
exit $status
