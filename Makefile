# outpost — build, demo and test. See README.md.
GO      ?= go
BIN     := bin
CACHE   ?= $(HOME)/.cache/outpost
export OUTPOST_INFLUXD ?= $(CACHE)/bin/influxd

.PHONY: all build demo test test-deps unit integration scenarios bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN)/gateway ./gateway/cmd/gateway
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

# Every test, with the race detector, then the testbench scenarios.
test: test-deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 10m ./...
	$(BIN)/testbench run all -report $(BIN)/reports

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./gateway/queue ./drivers/modbus ./gateway/uplink/...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./drivers/modbus

clean:
	rm -rf $(BIN)
