package mqtt_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"outpost/configs"
	"outpost/configs/mqtt"
)

// A password file written by mosquitto_passwd, a tool apart from the
// project, is one the gateway reads; and the reverse is the same format.
func TestMosquittoPasswdFile(t *testing.T) {
	tool, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Fatal("mosquitto_passwd not installed (make test-deps installs mosquitto)")
	}
	file := filepath.Join(t.TempDir(), "devices.passwd")
	if out, err := exec.Command(tool, "-c", "-b", file, "kiosk-1", "s3cret-pw").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	os.Chmod(file, 0o600)
	c, err := mqtt.ReadCredentials(file)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Verify("kiosk-1", "s3cret-pw") || c.Verify("kiosk-1", "s3cret-pX") || c.Verify("kiosk-2", "s3cret-pw") {
		t.Error("the mosquitto_passwd line does not verify as it should")
	}
}

func TestCredentialsErrors(t *testing.T) {
	for _, c := range []struct{ name, text, want string }{
		{"no colon", "kiosk-1\n", "f:1: expected DEVICE:HASH"},
		{"old format", "kiosk-1:$6$abc$def\n", "f:1: kiosk-1: not a $7$ (PBKDF2-SHA512) hash"},
		{"bad base64", "# devices\nkiosk-1:$7$101$!!$??\n", "f:2: kiosk-1: salt or hash is not base64"},
		{"twice", "a:$7$1$AAAA$" + strings.Repeat("A", 86) + "==\na:$7$1$AAAA$" + strings.Repeat("A", 86) + "==\n", "f:2: a has a line already"},
	} {
		_, err := mqtt.ParseCredentials("f", []byte(c.text))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	file := filepath.Join(t.TempDir(), "open.passwd")
	os.WriteFile(file, nil, 0o644)
	if _, err := mqtt.ReadCredentials(file); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a file others can read: %v", err)
	}
}

// Station files with mqtt links: every mistake at its place.
func TestLinkErrors(t *testing.T) {
	dir := t.TempDir()
	line, _ := mqtt.Hash("kiosk-1", "pw-kiosk-1")
	os.WriteFile(filepath.Join(dir, "devices.passwd"), []byte(line+"\n"), 0o600)
	station := `version: 2
station: {id: pc-1, type: police_cube}
state_dir: /var/lib/outpost/pc-1
hub: {mqtt: {url: "tcp://127.0.0.1:1883"}}
links:
  - {id: lan, protocol: mqtt, listen: "0.0.0.0:1883", credentials: devices.passwd, prefix: "a/b"}
  - {id: both, protocol: mqtt, listen: "0.0.0.0:1884", broker: "tcp://x:1883"}
  - {id: none, protocol: mqtt}
  - {id: ext, protocol: mqtt, broker: "tcp://127.0.0.1:1883"}
  - {id: ext-open, protocol: mqtt, broker: "ssl://127.0.0.1:8883", username: gw, password_file: open.pass}
devices:
  - {id: kiosk-1, template: outpost-kiosk, link: lan}
  - {id: kiosk-2, template: outpost-kiosk, link: lan, rate: 0}
  - {id: "kiosk 3", template: outpost-kiosk, link: lan}
`
	os.WriteFile(filepath.Join(dir, "open.pass"), []byte("pw\n"), 0o644)
	path := filepath.Join(dir, "station.yaml")
	os.WriteFile(path, []byte(station), 0o644)
	_, err := configs.Load(path)
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{
		`station.yaml:6:92: links[0].prefix: "a/b" is not a topic level`,
		"station.yaml:7:64: links[1].broker: give listen (the embedded broker) or broker (an external one), not both",
		"links[2].listen: an mqtt link needs listen",
		"devices[1].id: kiosk-2 has no line in " + filepath.Join(dir, "devices.passwd") + ": add it with gateway passwd",
		"devices[1].rate: 0 is out of range",
		"links[3].username: the gateway needs a user name at the external broker",
		"links[3].password_file: the gateway needs the file of its password",
		"links[4].password_file: " + filepath.Join(dir, "open.pass") + " can be read by group or others (mode 0644)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}

// A link to an external broker: the gateway's password is read from its
// file, relative to the station file, when the station is loaded.
func TestExternalLink(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "gw.pass"), []byte("  s3cret pass\n"), 0o600)
	station := `version: 2
station: {id: pc-1, type: police_cube}
state_dir: /var/lib/outpost/pc-1
hub: {mqtt: {url: "tcp://127.0.0.1:1883"}}
links:
  - {id: lan, protocol: mqtt, broker: "tcp://192.168.10.2:1883", username: outpost-gw, password_file: gw.pass}
devices:
  - {id: kiosk-1, template: outpost-kiosk, link: lan}
`
	path := filepath.Join(dir, "station.yaml")
	os.WriteFile(path, []byte(station), 0o644)
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	l := st.Links[0].Settings.(*mqtt.Link)
	if l.Embedded() || l.Password() != "s3cret pass" || l.PasswordFile != filepath.Join(dir, "gw.pass") || l.Devices() != nil {
		t.Errorf("link %+v, password %q", l, l.Password())
	}
	for _, c := range []struct{ text, want string }{
		{"\n", "is empty"},
		{"one\ntwo\n", "more than one line"},
	} {
		file := filepath.Join(dir, "bad.pass")
		os.WriteFile(file, []byte(c.text), 0o600)
		if _, err := mqtt.ReadPassword(file); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.text, err, c.want)
		}
	}
}

// A template's mistakes, each at its line.
func TestTemplateErrors(t *testing.T) {
	dir := t.TempDir()
	line, _ := mqtt.Hash("kiosk-1", "pw-kiosk-1")
	os.WriteFile(filepath.Join(dir, "devices.passwd"), []byte(line+"\n"), 0o600)
	os.Mkdir(filepath.Join(dir, "devices"), 0o755)
	os.WriteFile(filepath.Join(dir, "devices", "bad-kiosk.yaml"), []byte(`template: bad-kiosk
protocol: mqtt
kind: kiosk
heartbeat: {message: beat, every: 30s}
messages:
  - name: telemetry
    signals:
      - {signal: t, path: env.t, type: strng}
      - {signal: door, path: door, event: {kind: door}}
  - name: cmd
  - name: telemetry
  - name: req
    event:
      kind: req
      details:
        - {name: x, type: nmbr}
        - {name: state, path: s2}
actions:
  - {name: show, set: [{signal: t, value: 1}]}
`), 0o644)
	path := filepath.Join(dir, "station.yaml")
	os.WriteFile(path, []byte(`version: 2
station: {id: pc-1, type: police_cube}
state_dir: /var/lib/outpost/pc-1
hub: {mqtt: {url: "tcp://127.0.0.1:1883"}}
links:
  - {id: lan, protocol: mqtt, listen: "0.0.0.0:1883", credentials: devices.passwd}
devices:
  - {id: kiosk-1, template: bad-kiosk, link: lan}
`), 0o644)
	_, err := configs.Load(path)
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{
		`bad-kiosk.yaml:8:40: messages[0].signals[0].type: unknown value "strng" (expected one of: number, bool, string)`,
		"bad-kiosk.yaml:9:43: messages[0].signals[1].event: events are raised by bool signals only",
		`bad-kiosk.yaml:10:11: messages[1].name: "cmd" is a topic the gateway uses itself`,
		`bad-kiosk.yaml:11:11: messages[2].name: message "telemetry" is listed twice`,
		`bad-kiosk.yaml:16:27: messages[3].event.details[0].type: unknown value "nmbr"`,
		`messages[3].event.details[1].name: detail "state" is listed twice or is one the gateway sets`,
		`bad-kiosk.yaml:4:22: heartbeat.message: the template has no message "beat"`,
		"actions[0].set: this device takes actions as messages: an action sends its args and sets no signal",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}

// A broker listening on every address is on the hub's side too.
func TestListenWarning(t *testing.T) {
	for _, c := range []struct {
		listen string
		warn   bool
	}{{"0.0.0.0:1883", true}, {":1883", true}, {"[::]:1883", true}, {"192.168.10.1:1883", false}, {"127.0.0.1:1883", false}} {
		w := (&mqtt.Link{Listen: c.listen}).Warnings()
		if (len(w) > 0) != c.warn {
			t.Errorf("listen %s: warnings %q, want a warning: %v", c.listen, w, c.warn)
		}
	}
}
