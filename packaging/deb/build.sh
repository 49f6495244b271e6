#!/usr/bin/env bash
# Builds wanpin_VERSION_ARCH.deb into OUTDIR (default: ./dist).
# Usage: packaging/deb/build.sh [VERSION] [OUTDIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. scripts/env.sh
version=${1:-0.2.0}
out=${2:-$top/dist}
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -d "$stage/DEBIAN"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$stage/usr/sbin/wanpin" ./cmd/wanpin
install -D -m 644 packaging/wanpin.service "$stage/lib/systemd/system/wanpin.service"
install -D -m 644 packaging/networkd/wanpin.conf "$stage/usr/lib/systemd/networkd.conf.d/wanpin.conf"
install -D -m 644 dbus/org.wanpin.Wanpin1.conf "$stage/usr/share/dbus-1/system.d/org.wanpin.Wanpin1.conf"
install -D -m 755 hooks/ppp/ip-up "$stage/etc/ppp/ip-up.d/wanpin"
install -D -m 755 hooks/ppp/ip-down "$stage/etc/ppp/ip-down.d/wanpin"
# DHCP clients' hooks, as Debian's own packages install theirs: dhclient's
# exit hooks and dhcpcd's hooks are sourced (0644), NetworkManager's
# dispatcher scripts are executed (0755, root's, not group-writable).
install -D -m 644 hooks/dhcp/dhclient-exit-hook "$stage/etc/dhcp/dhclient-exit-hooks.d/wanpin"
install -D -m 644 hooks/dhcp/dhcpcd-hook "$stage/usr/lib/dhcpcd/dhcpcd-hooks/90-wanpin"
install -D -m 755 hooks/dhcp/nm-dispatcher "$stage/etc/NetworkManager/dispatcher.d/90-wanpin"
install -D -m 644 examples/wanpin.toml "$stage/etc/wanpin/wanpin.toml"
install -d "$stage/etc/wanpin/hooks.d"
install -D -m 644 packaging/completion/wanpin.bash "$stage/usr/share/bash-completion/completions/wanpin"
install -D -m 644 examples/wanpin.toml "$stage/usr/share/doc/wanpin/examples/wanpin.toml"
install -D -m 644 LICENSE "$stage/usr/share/doc/wanpin/copyright"
# What an upgrade changes, where apt-listchanges and Debian users look.
gzip -9n < packaging/deb/NEWS > "$stage/usr/share/doc/wanpin/NEWS.Debian.gz"
for page in wanpin.8 wanpin.toml.5; do
	section=${page##*.}
	install -d "$stage/usr/share/man/man$section"
	gzip -9n < "packaging/man/$page" > "$stage/usr/share/man/man$section/$page.gz"
done

cat > "$stage/DEBIAN/conffiles" <<CONF
/etc/wanpin/wanpin.toml
/etc/ppp/ip-up.d/wanpin
/etc/ppp/ip-down.d/wanpin
/etc/dhcp/dhclient-exit-hooks.d/wanpin
/etc/NetworkManager/dispatcher.d/90-wanpin
CONF
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CTRL
Package: wanpin
Version: $version
Architecture: $arch
Maintainer: wanpin developers <wanpin@example.org>
Installed-Size: $size
Depends: nftables, iproute2
Recommends: dbus, conntrack
Suggests: ppp, isc-dhcp-client | dhcpcd
Section: net
Priority: optional
Homepage: https://example.org/wanpin
Description: multi-WAN router daemon: several uplinks used as one
 wanpin spreads new connections over a router's healthy uplinks (PPPoE,
 DHCP cable or fibre, LTE, tethering) by weight and tier, routes chosen
 users, services, hosts and destinations to chosen uplinks, moves traffic
 off an uplink the moment it dies and pins every connection to its uplink,
 with policy routing, fwmarks and conntrack on the router alone.
CTRL
cat > "$stage/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	# The bus reads policy files at start and on reload.
	systemctl reload dbus >/dev/null 2>&1 || true
fi
exit 0
SH
cat > "$stage/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	systemctl stop wanpin.service >/dev/null 2>&1 || true
fi
exit 0
SH
cat > "$stage/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
	rmdir /etc/wanpin/hooks.d /etc/wanpin 2>/dev/null || true
	# The data quotas' counts (the unit's StateDirectory).
	rm -rf /var/lib/wanpin
	# `systemctl enable wanpin` made this link; nothing else removes it.
	rm -f /etc/systemd/system/multi-user.target.wants/wanpin.service
	rmdir /etc/systemd/system/multi-user.target.wants 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SH
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$stage" "$out/wanpin_${version}_${arch}.deb" >/dev/null
echo "$out/wanpin_${version}_${arch}.deb"
