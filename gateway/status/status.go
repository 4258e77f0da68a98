// Package status is the gateway's account of itself for the people at the
// station and at the hub: whether each uplink reaches the hub (and why
// not), and what waits in its queue. The running gateway writes it to
// STATE_DIR/status.json every few seconds; `gateway status` reads it.
package status

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Snapshot is the gateway's status at one moment: the status file, the
// JSON API's /api/status, and the health snapshot the hub is sent
// (docs/hub-contract.md).
type Snapshot struct {
	V       int       `json:"v"`
	Station string    `json:"station"`
	Type    string    `json:"station_type"`
	Time    time.Time `json:"time"`
	Started time.Time `json:"started"`
	Uplinks []Uplink  `json:"uplinks"`
	// Disk is the space left where the gateway keeps its state.
	Disk    Disk     `json:"disk"`
	Devices []Device `json:"devices"`
	// Listen is the status server's address, when it runs.
	Listen string `json:"listen,omitempty"`
	// Reload is how the last reload of the station file went, once
	// there was one.
	Reload *Reload `json:"reload,omitempty"`
	// StateDirError, when set, is why the gateway could not write its
	// state_dir at start: it keeps its state in memory, in Disk.Dir.
	StateDirError string `json:"state_dir_error,omitempty"`
}

// Reload is the outcome of reloading the station file.
type Reload struct {
	At      time.Time `json:"at"`
	Applied bool      `json:"applied"`
	// Detail says what restarted, or why the file was refused.
	Detail string `json:"detail"`
}

// Disk is the file system of the state directory.
type Disk struct {
	Dir       string `json:"dir"`
	FreeBytes uint64 `json:"free_bytes"`
	Error     string `json:"error,omitempty"`
}

// Uplink is one hub store's uplink.
type Uplink struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	// Cause says why not, in an installer's words.
	Cause string    `json:"cause,omitempty"`
	Since time.Time `json:"since"`
	// Broker is, for the broker's uplink, the hub broker its main
	// connection is on, or was last on while down (its URL without
	// password); AlarmBroker that of the alarm connection. With a
	// clustered hub (hub.mqtt.urls) they say where the gateway moved.
	Broker      string `json:"broker,omitempty"`
	AlarmBroker string `json:"alarm_broker,omitempty"`
	Queue       Queue  `json:"queue"`
	// DeadLetters is how many messages the hub refused for good since the
	// gateway started (kept in STATE_DIR/deadletter).
	DeadLetters int64 `json:"dead_letters"`
	// Forwarders drain the queue to the hub, one per lane.
	Forwarders []Forwarder `json:"forwarders"`
}

// Forwarder is what the forwarder of one queue lane has done since the
// gateway started.
type Forwarder struct {
	Lane string `json:"lane"`
	// Delivered messages the hub took; Failures, sends it did not accept
	// (retried); Restarts, times the forwarder failed and was restarted.
	Delivered    uint64    `json:"delivered"`
	Failures     uint64    `json:"failures"`
	Restarts     uint64    `json:"restarts"`
	LastDelivery time.Time `json:"last_delivery,omitzero"`
}

// Queue is what waits for an uplink.
type Queue struct {
	Alarms    int64 `json:"alarms"`
	Telemetry int64 `json:"telemetry"`
	Readings  int64 `json:"readings"`
	Bytes     int64 `json:"bytes"`
	// InMemory alarms and health changes, and TelemetryInMemory
	// telemetry records, wait in memory because the disk refuses them.
	InMemory          int64 `json:"in_memory"`
	TelemetryInMemory int64 `json:"telemetry_in_memory"`
	// DroppedReadings since start: at the queue's cap, or refused by the
	// disk with the memory reserve full. LostAlarms: refused by the disk
	// with memory full, or in queue files deleted before they were sent.
	DroppedReadings int64  `json:"dropped_readings"`
	LostAlarms      int64  `json:"lost_alarms"`
	DiskError       string `json:"disk_error,omitempty"`
	// OldestAgeS is how long the oldest record has waited, in seconds;
	// absent when nothing waits (or before the first is sent).
	OldestAgeS float64 `json:"oldest_age_s,omitempty"`
}

// File is where a gateway with that state directory keeps its status.
func File(stateDir string) string { return filepath.Join(stateDir, "status.json") }

// Write replaces the status file atomically (it is not fsynced: it is
// made again every few seconds).
func Write(path string, s Snapshot) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// Read reads a status file.
func Read(path string) (Snapshot, error) {
	var s Snapshot
	b, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}
