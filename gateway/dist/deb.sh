#!/bin/sh
# Builds the Debian package of the gateway for one architecture with
# dpkg-deb, from a static binary made by make dist:
#
#   gateway/dist/deb.sh VERSION GOARCH BINARY OUTDIR
#
# GOARCH is amd64, arm64 or arm (ARMv7: Debian's armhf). The package holds
# /usr/bin/outpost-gateway, the systemd unit, /etc/outpost (the station
# file and secrets, 0750 root:outpost; an example station file) and
# /var/lib/outpost (state, 0700 outpost:outpost, kept on removal and
# upgrade). Its scripts create the outpost system user.
set -eu
version=$1 goarch=$2 bin=$3 out=$4
case $goarch in
amd64) arch=amd64 ;;
arm64) arch=arm64 ;;
arm) arch=armhf ;;
*) echo "deb.sh: unknown GOARCH $goarch" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
chmod 0755 "$root"
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/outpost-gateway"
install -D -m 0644 "$here/outpost.service" "$root/lib/systemd/system/outpost.service"
# The example keeps its state where the service keeps it (the demo's is
# under /tmp, which the service does not share).
install -d -m 0755 "$root/usr/share/doc/outpost-gateway/examples"
sed 's|^state_dir: /tmp/outpost/pr-0001/state$|state_dir: /var/lib/outpost/pr-0001|' "$here/../../configs/police-room.yaml" \
	>"$root/usr/share/doc/outpost-gateway/examples/police-room.yaml"
grep -q '^state_dir: /var/lib/outpost/pr-0001$' "$root/usr/share/doc/outpost-gateway/examples/police-room.yaml"
chmod 0644 "$root/usr/share/doc/outpost-gateway/examples/police-room.yaml"
install -d -m 0750 "$root/etc/outpost"
install -d -m 0700 "$root/var/lib/outpost"
install -d -m 0755 "$root/DEBIAN"
# Debian versions start with a digit.
case $version in [0-9]*) ;; *) version="0.0~$version" ;; esac
cat >"$root/DEBIAN/control" <<CONTROL
Package: outpost-gateway
Version: $version
Architecture: $arch
Maintainer: outpost developers <outpost@example.org>
Section: net
Priority: optional
Depends: adduser
Description: outpost gateway for public-safety stations
 Reads a station's sensors, panic buttons, alarm panels and kiosks over
 serial lines, Modbus RTU/TCP, SIA DC-09 and DCON, and forwards everything
 to the city-brain hub (MQTT and InfluxDB) without losing an alarm.
CONTROL
for s in postinst prerm postrm; do
	install -m 0755 "$here/$s" "$root/DEBIAN/$s"
done
mkdir -p "$out"
dpkg-deb --root-owner-group --build "$root" "$out/outpost-gateway_${version}_${arch}.deb" >/dev/null
echo "$out/outpost-gateway_${version}_${arch}.deb"
