#!/bin/sh
# Installs what the tests need, and only what is missing: Mosquitto and its
# clients (mosquitto_pub stands in for a kiosk in a test), NATS
# server (a clustered hub broker that speaks MQTT), socat, mbpoll, pymodbus,
# Chromium (for the status page's test), e2fsprogs and util-linux (mkfs.ext4,
# chattr, losetup, fsfreeze: the disk fault tests) from Debian,
# and InfluxDB 1.8.10 built from source into $HOME/.cache/outpost/bin
# (Debian's InfluxDB is 1.6, which lacks the 2.x write API). Safe to run
# again.
set -eu

pkgs="mosquitto mosquitto-clients nats-server socat mbpoll python3-pymodbus chromium e2fsprogs util-linux"
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	echo "setup: installing$missing"
	$sudo apt-get update
	# Keep apt from starting the brokers as system services: tests start
	# their own brokers on free ports.
	printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
	$sudo chmod +x /usr/sbin/policy-rc.d
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y $missing || { $sudo rm -f /usr/sbin/policy-rc.d; exit 1; }
	$sudo rm -f /usr/sbin/policy-rc.d
fi
# A broker left running by an earlier install would hold its ports (1883,
# 4222).
for svc in mosquitto nats-server; do
	if command -v service >/dev/null 2>&1 && service "$svc" status >/dev/null 2>&1; then
		echo "setup: stopping the system $svc service"
		${sudo:-} service "$svc" stop || true
	fi
done

bin="${HOME}/.cache/outpost/bin"
if [ ! -x "$bin/influxd" ]; then
	echo "setup: building influxd 1.8.10 into $bin (takes a few minutes)"
	mkdir -p "$bin"
	tmp=$(mktemp -d)
	# Outside our module, so that our go.mod is left alone.
	(cd "$tmp" && GOBIN="$bin" GOFLAGS=-mod=mod go install github.com/influxdata/influxdb/cmd/influxd@v1.8.10)
	rm -rf "$tmp"
fi
echo "setup: test dependencies present"
