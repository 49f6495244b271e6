#!/usr/bin/env bash
# Shows wanpin at work in a lab of network namespaces (a LAN host, the
# router running wanpin, two ISPs and a server), then removes the lab.
# Run as root on a Debian machine: sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
./scripts/deps.sh
mkdir -p bin
go build -o bin/wanpin ./cmd/wanpin
exec go run ./internal/demo --wanpin "$PWD/bin/wanpin"
