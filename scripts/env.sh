# Sourced by the scripts: puts Go on PATH and lets an older Debian Go
# fetch the toolchain go.mod asks for through the module proxy.
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
