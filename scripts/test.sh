#!/usr/bin/env bash
# Runs every wanpin test: unit tests, golden tests, fuzz seeds, and the
# end-to-end tests that build a small internet in network namespaces.
# Run as root on a Debian machine: sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
./scripts/deps.sh
go mod download
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
# -p 1: the end-to-end packages each build a lab and run daemons; running
# them one after another keeps timing-sensitive checks honest on 2 cores.
go test -p 1 -count=1 -timeout 40m "$@" ./...
