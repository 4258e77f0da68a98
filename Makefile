# outpost — build, demo and test. See README.md.
GO      ?= go
BIN     := bin
CACHE   ?= $(HOME)/.cache/outpost
export OUTPOST_INFLUXD ?= $(CACHE)/bin/influxd

.PHONY: all build demo test test-deps unit integration scenarios bench fuzz dist clean soak

all: build

# The gateway is built static, as `make dist` ships it (no libc mapped: 1.5 MB
# less RSS, and the figures of `make bench` are those of a station's gateway).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/gateway ./gateway/cmd/gateway
	$(GO) build -o $(BIN)/firmware-sim ./firmware-sim
	$(GO) build -o $(BIN)/testbench ./testbench

# The simulated police room, an in-process MQTT broker standing in for the
# hub, and the gateway between them; a live view of what reaches the hub.
demo: build
	$(BIN)/testbench demo

# Installs Mosquitto, socat, mbpoll, pymodbus (Debian packages) and builds
# InfluxDB 1.8.10 into $(CACHE), once.
test-deps:
	testbench/setup.sh

# Every test, with the race detector, then the testbench scenarios. The
# packages' tests wait on real servers, serial lines and devices' timing
# more than they use the CPU: three packages run at once, the slowest
# first (on 2 cores, 160-190 s where two at a time in path order took 275).
SLOW_TESTS := ./testbench ./drivers/modbus ./gateway/cmd/gateway ./gateway/queue ./gateway/uplink/mqtt ./drivers/dcon
test: test-deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m -p 3 $(SLOW_TESTS) ./...
	$(BIN)/testbench run all -report $(BIN)/reports

# The fleet of docs/scaling.md for five minutes: SOAK_STATIONS stations of the
# five types, each with its own gateway and simulated devices, against one
# Mosquitto and one InfluxDB on this machine; then the fleet-cluster run
# (a hub of three NATS nodes, one killed mid-run), and the scenarios marked
# soak (kiosk-loop). Too long for `make test`.
# Nothing may be lost, and every device must keep 90% of its poll rate: on
# a 2-core machine to itself, 20 stations do (docs/scaling.md).
SOAK_STATIONS ?= 20
SOAK_DURATION ?= 5m
soak: test-deps build
	$(BIN)/testbench run fleet -stations $(SOAK_STATIONS) -duration $(SOAK_DURATION) -report $(BIN)/fleet.json
	$(BIN)/testbench run fleet-cluster -stations 6 -duration 2m -report $(BIN)/fleet-cluster.json
	$(BIN)/testbench run kiosk-loop -report $(BIN)/kiosk-loop.json

# The load benchmark (docs/testbench.md) at the loads of docs/operations.md,
# "Measured": 1,500 readings/s, 15,000 (100 units of 15 fields every
# 100 ms) and one that asks for 110,000 (220 units every 30 ms on 44
# endpoints, five units a connection), one window of BENCH_WINDOW each;
# then the Go benchmarks.
BENCH_WINDOW ?= 60s
bench: test-deps build
	$(BIN)/testbench run bench-tcp -units 10 -poll 100ms -window $(BENCH_WINDOW) -report $(BIN)/bench-1500.json
	$(BIN)/testbench run bench-tcp -units 100 -poll 100ms -window $(BENCH_WINDOW) -report $(BIN)/bench-15000.json
	$(BIN)/testbench run bench-tcp -units 220 -poll 30ms -endpoints 44 -window $(BENCH_WINDOW) -report $(BIN)/bench-100000.json
	$(GO) test -run '^$$' -bench . -benchtime 2s ./gateway/queue ./drivers/modbus ./gateway/uplink/...

# Every fuzz target for FUZZTIME each (the seed corpora also run in `make test`).
FUZZTIME ?= 20s
FUZZ := ./configs:FuzzParse ./drivers/modbus:FuzzDecode ./drivers/modbus:FuzzRTUResponse \
	./drivers/modbus:FuzzTCPResponse ./drivers/modbus:FuzzCheckRTU ./drivers/modbus:FuzzReadRequestIn ./gateway/model:FuzzParseJSON \
	./gateway/model:FuzzDecodeBinary ./gateway/queue:FuzzOpen ./firmware-sim/slave:FuzzParseRequest \
	./firmware-sim/enc:FuzzDecode ./drivers/dc09:FuzzFrame ./drivers/dc09:FuzzContactID \
	./drivers/dcon:FuzzResponse ./gateway/command:FuzzDecode ./drivers/mqtt:FuzzDecode ./drivers/line:FuzzLine
fuzz:
	@for t in $(FUZZ); do \
		echo "fuzz $${t#*:} in $${t%%:*}"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) $${t%%:*} || exit 1; \
	done

# Static gateway binaries for station boxes (linux/amd64, linux/arm64,
# linux/arm v7) and a Debian package of each, in $(DIST)/.
DIST    ?= dist
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
ARCHS   := amd64 arm64 arm
dist:
	@for a in $(ARCHS); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$a GOARM=7 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" \
			-o $(DIST)/linux-$$a/outpost-gateway ./gateway/cmd/gateway || exit 1; \
		gateway/dist/deb.sh $(VERSION) $$a $(DIST)/linux-$$a/outpost-gateway $(DIST) || exit 1; \
	done

clean:
	rm -rf $(BIN) $(DIST)
