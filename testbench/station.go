package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"outpost/configs"
	"outpost/configs/mqtt"
	"outpost/gateway/status"
	"outpost/testbench/hub"
)

// hubAddrs is where the station under test must send its data.
type hubAddrs struct {
	MQTT string // tcp://127.0.0.1:port
	// MQTTURLs are the brokers of a clustered hub (hub.mqtt.urls), in the
	// order the gateway tries them; when set, MQTT is not used.
	MQTTURLs []string
	Influx   string // http://127.0.0.1:port, or "" for none
	DB       string
}

// stationSpec says which station to run and what to change in it.
type stationSpec struct {
	Src       []byte         // the station file
	ID        string         // replaces station.id, when set (a fleet's stations each have their own)
	Templates string         // a devices/ folder to copy beside it, or ""
	Queue     map[string]any // replaces the queue section, when set
	Health    map[string]any // replaces the health section, when set
	Poll      time.Duration  // replaces every device's poll interval, when set
	AlarmPoll *time.Duration // replaces every Modbus device's alarm_poll, when set
	Links     map[string]any // settings given to every Modbus link (timeout, retries), when set
	MQTT      map[string]any // settings given to hub.mqtt (max_packet_size), when set
	// Exceptions keeps the station's report by exception on. Without it
	// the run turns it off (report_by_exception: false): the scenarios
	// count every reading the simulator served against the hub's.
	Exceptions bool
}

// prepareStation rewrites a station file for a run in work: the hub's
// addresses, the state directory, a serial port path per bus inside work and
// a free loopback port per TCP endpoint, so that runs never collide. It
// returns the path of the new file and the station as loaded from it.
func prepareStation(spec stationSpec, work string, addrs hubAddrs) (string, *configs.Station, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(spec.Src, &doc); err != nil {
		return "", nil, fmt.Errorf("station file: %w", err)
	}
	// The hub is the run's; the station's own commands section stays.
	mq := map[string]any{"url": addrs.MQTT}
	if len(addrs.MQTTURLs) > 0 {
		mq = map[string]any{"urls": addrs.MQTTURLs}
	}
	maps.Copy(mq, spec.MQTT)
	h := map[string]any{"mqtt": mq}
	if addrs.Influx != "" {
		h["influx"] = map[string]any{"url": addrs.Influx, "bucket": addrs.DB}
	}
	if old, ok := doc["hub"].(map[string]any); ok && old["commands"] != nil {
		h["commands"] = old["commands"]
	}
	doc["hub"] = h
	if spec.ID != "" {
		station, ok := doc["station"].(map[string]any)
		if !ok {
			return "", nil, fmt.Errorf("station file: no station section to give the id %s", spec.ID)
		}
		station["id"] = spec.ID
	}
	doc["state_dir"] = filepath.Join(work, "state")
	if !spec.Exceptions {
		doc["report_by_exception"] = false
	}
	// The status server on a free port (status.json says which).
	doc["status"] = map[string]any{"listen": "127.0.0.1:0"}
	if spec.Queue != nil {
		doc["queue"] = spec.Queue
	}
	if spec.Health != nil {
		doc["health"] = spec.Health
	}
	links, _ := doc["links"].([]any)
	type addressed struct {
		link map[string]any
		key  string
	}
	var free []addressed // the links' addresses given a free port
	for _, l := range links {
		for _, key := range []string{"address", "listen"} {
			if _, ok := l.(map[string]any)[key]; ok {
				free = append(free, addressed{l.(map[string]any), key})
			}
		}
	}
	// Found together, so that no two links are given the same port.
	ports, err := hub.FreePorts(len(free))
	if err != nil {
		return "", nil, err
	}
	for i, a := range free {
		a.link[a.key] = fmt.Sprintf("127.0.0.1:%d", ports[i])
	}
	polled := map[string]bool{} // links whose devices are polled
	for _, l := range links {
		link := l.(map[string]any)
		if _, ok := link["port"]; ok {
			link["port"] = filepath.Join(work, "tty", fmt.Sprint(link["id"]))
		}
		if p := fmt.Sprint(link["protocol"]); strings.HasPrefix(p, "modbus-") {
			polled[fmt.Sprint(link["id"])] = true
			maps.Copy(link, spec.Links)
		}
	}
	devs, _ := doc["devices"].([]any)
	for _, d := range devs {
		if dev := d.(map[string]any); polled[fmt.Sprint(dev["link"])] {
			if spec.Poll > 0 {
				dev["poll"] = spec.Poll.String()
			}
			if spec.AlarmPoll != nil {
				dev["alarm_poll"] = spec.AlarmPoll.String()
			}
		}
	}
	if err := makeKeys(doc, filepath.Join(work, "keys")); err != nil {
		return "", nil, err
	}
	if err := makeCredentials(doc, filepath.Join(work, "keys")); err != nil {
		return "", nil, err
	}
	if spec.Templates != "" {
		if err := os.CopyFS(filepath.Join(work, "devices"), os.DirFS(spec.Templates)); err != nil {
			return "", nil, fmt.Errorf("copying templates: %w", err)
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(work, "station.yaml")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return "", nil, err
	}
	st, err := configs.Load(path)
	if err != nil {
		return "", nil, fmt.Errorf("prepared station file:\n%w", err)
	}
	return path, st, nil
}

// stationTopics is the MQTT filter of everything a station publishes.
func stationTopics(st *configs.Station) string {
	return st.Hub.MQTT.TopicPrefix + "/" + st.Station.ID + "/#"
}

// makeKeys gives every key_file of a station document a new random key of
// 32 bytes (AES-256, HMAC-SHA256) in dir, readable by its owner only: a
// key file cannot come from the source tree, which keeps no file modes.
// Files named alike share a key.
func makeKeys(doc any, dir string) error {
	made := map[string]string{}
	var walk func(v any) error
	walk = func(v any) error {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				name, ok := x.(string)
				if k != "key_file" || !ok {
					if err := walk(x); err != nil {
						return err
					}
					continue
				}
				if made[name] == "" {
					key := make([]byte, 32)
					rand.Read(key)
					path := filepath.Join(dir, fmt.Sprintf("%d-%s", len(made), filepath.Base(name)))
					if err := os.MkdirAll(dir, 0o700); err != nil {
						return err
					}
					if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
						return err
					}
					made[name] = path
				}
				v[k] = made[name]
			}
		case []any:
			for _, x := range v {
				if err := walk(x); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(doc)
}

// makeCredentials gives every device on an mqtt link with a password file
// a new random password: the link's file in dir gets its hash, the
// device's sim.password_file the password, for the simulated device.
func makeCredentials(doc map[string]any, dir string) error {
	links, _ := doc["links"].([]any)
	files := map[string]string{} // link id: its password file
	var lines = map[string][]string{}
	for _, l := range links {
		link := l.(map[string]any)
		if link["protocol"] == mqtt.Protocol && link["credentials"] != nil {
			id := fmt.Sprint(link["id"])
			files[id] = filepath.Join(dir, id+".passwd")
			link["credentials"] = files[id]
		}
	}
	if len(files) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	devs, _ := doc["devices"].([]any)
	for _, d := range devs {
		dev := d.(map[string]any)
		link, id := fmt.Sprint(dev["link"]), fmt.Sprint(dev["id"])
		if files[link] == "" {
			continue
		}
		pw := make([]byte, 12)
		rand.Read(pw)
		line, err := mqtt.Hash(id, hex.EncodeToString(pw))
		if err != nil {
			return err
		}
		lines[link] = append(lines[link], line)
		path := filepath.Join(dir, id+".pass")
		if err := os.WriteFile(path, []byte(hex.EncodeToString(pw)+"\n"), 0o600); err != nil {
			return err
		}
		sim, _ := dev["sim"].(map[string]any)
		if sim == nil {
			sim = map[string]any{}
		}
		sim["password_file"] = path
		dev["sim"] = sim
	}
	for link, path := range files {
		if err := os.WriteFile(path, []byte(strings.Join(lines[link], "\n")+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// statusAddr waits for the gateway of a station, one started at since or
// later (time.Time{}: any), to say where its status server listens (in
// its status file), until ctx ends.
func statusAddr(ctx context.Context, st *configs.Station, since time.Time) (string, error) {
	for {
		if s, err := status.Read(status.File(st.StateDir)); err == nil && s.Listen != "" && !s.Started.Before(since) {
			return s.Listen, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the gateway never said where its status server listens (%s): %w", status.File(st.StateDir), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
