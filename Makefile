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

bench: test-deps build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./gateway/queue ./drivers/modbus ./gateway/uplink/...

# Every fuzz target for FUZZTIME each (the seed corpora also run in `make test`).
FUZZTIME ?= 20s
FUZZ := ./configs:FuzzParse ./drivers/modbus:FuzzDecode ./drivers/modbus:FuzzRTUResponse \
	./drivers/modbus:FuzzTCPResponse ./drivers/modbus:FuzzCheckRTU ./gateway/model:FuzzParseJSON \
	./gateway/model:FuzzDecodeBinary ./gateway/queue:FuzzOpen ./firmware-sim/slave:FuzzParseRequest \
	./firmware-sim/enc:FuzzDecode ./drivers/dc09:FuzzFrame ./drivers/dc09:FuzzContactID \
	./drivers/dcon:FuzzResponse ./gateway/command:FuzzDecode
fuzz:
	@for t in $(FUZZ); do \
		echo "fuzz $${t#*:} in $${t%%:*}"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) $${t%%:*} || exit 1; \
	done

clean:
	rm -rf $(BIN)
