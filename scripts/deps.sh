#!/usr/bin/env bash
# Installs what wanpin's lab and tests need on a Debian machine, once.
# Safe to run again: it only installs what is missing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: run as root (the lab creates network namespaces)" >&2
  exit 1
fi

# command -> Debian package that provides it
declare -A need=(
  [ip]=iproute2 [nft]=nftables [conntrack]=conntrack [iperf3]=iperf3
  [socat]=socat [curl]=curl [dbus-daemon]=dbus-daemon [nsenter]=util-linux
  [setpriv]=util-linux [systemd-analyze]=systemd [dpkg-deb]=dpkg
  [radvd]=radvd [rdisc6]=ndisc6 [ndisc6]=ndisc6 [ping]=iputils-ping
  # The lab's DHCP clients, ISP servers and resolvers. The -base packages
  # bring the binaries without a service that would start on the host:
  # package dhcpcd would run dhcpcd on the machine's own interfaces.
  [dhclient]=isc-dhcp-client [dhcpcd]=dhcpcd-base [dnsmasq]=dnsmasq-base
  [dig]=bind9-dnsutils
  # Neighbours simulated in the lab: Docker and kube-proxy write their
  # rules with iptables-nft (Debian 12's default iptables).
  [iptables]=iptables
  # The datapath benchmark's small-packet generator (internal/bench).
  [trafgen]=netsniff-ng
  # The booted router (e2e/boot_test.go): a Debian root file system
  # from Debian's packages, booted under systemd in the router namespace.
  [debootstrap]=debootstrap [systemd-nspawn]=systemd-container
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # iperf3 asks whether to start a daemon; the lab starts its own.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    :
  else
    echo "deps.sh: installing Go"
    apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
  fi
fi
