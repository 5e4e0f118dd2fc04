#!/usr/bin/env bash
# The nightly-evaluation demo, on this machine, against the fake provider (no real API is called):
# two runs of the capitals suite, the second after gpt-4o-mini "got worse", then the HTML report.
# Needs Postgres and Redis as for `batcher demo` (BATCHER_DATABASE_URL / BATCHER_REDIS_URL).
#
#   examples/capitals/demo.sh [-o|--output FILE]
#
# The report goes to FILE, by default capitals-report.html in $BATCHER_OUTPUT_DIR (default
# ${XDG_STATE_HOME:-~/.local/state}/batcher): never into the directory you run it from.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${FAKE_PORT:-9999}"
out="${BATCHER_OUTPUT_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/batcher}/capitals-report.html"
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) out="$2"; shift 2 ;;
    *) echo "usage: $0 [-o|--output FILE]" >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$out")"
work="$(mktemp -d)"

export OPENAI_BASE_URL="http://127.0.0.1:$port/v1" ANTHROPIC_BASE_URL="http://127.0.0.1:$port"
export CO_API_URL="http://127.0.0.1:$port"
export OPENAI_API_KEY=sk-demo ANTHROPIC_API_KEY=sk-ant-demo COHERE_API_KEY=co-demo
export BATCHER_QUEUE="batcher.evaldemo.$$" BATCHER_RACE_QUEUE="batcher.evaldemo.$$.race"

batcher db upgrade
batcher fake-provider --port "$port" --config "$here/fake-provider.json" >"$work/fake.log" 2>&1 &
fake=$!
batcher worker --concurrency 20 --log-level WARNING >"$work/worker.log" 2>&1 &
worker=$!
trap 'kill "$worker" "$fake" 2>/dev/null; wait "$worker" "$fake" 2>/dev/null; rm -rf "$work"' EXIT

fake_call() {  # fake_call PATH [JSON]: GET, or POST the JSON, to the fake provider's control API
  python - "http://127.0.0.1:$port$1" "${2:-}" <<'PY'
import sys, time, urllib.request
url, body = sys.argv[1], sys.argv[2]
for _ in range(600):  # up to a minute: the fake starts while the worker does
    try:
        req = urllib.request.Request(url, data=body.encode() or None, headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=2).read()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the fake provider does not answer at {url}")
PY
}
fake_call /_fake/health

echo "== run 1: the suite as it is"
batcher eval run "$here/suite.yaml"

echo "== gpt-4o-mini now answers 'Paris' to every question; run 2 should flag it"
fake_call /_fake/behaviour '{"model": "gpt-4o-mini", "behaviour": {"answer": "Paris"}}'
batcher eval run "$here/suite.yaml" --fail-on-regression || echo "(exit status $?: a regression, as expected)"

batcher eval report "$here/suite.yaml" -o "$out"
echo "open $out"
