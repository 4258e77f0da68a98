package dc09

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"testing"
	"time"

	cfg "outpost/configs/dc09"
	"outpost/drivers"
	"outpost/gateway/model"
)

// plainFrame is a frame in clear with a fresh timestamp.
func plainFrame(token, seq, head, data string) []byte {
	return encode(`"` + token + `"` + seq + head + "[" + data + "]" + stamp(time.Now()))
}

// TestEventAndDuplicates: an event is emitted once, acknowledged after it,
// and a repeat of its frame (the ACK was lost) is acknowledged again
// without a second event, also by a receiver started anew on the same
// state folder.
func TestEventAndDuplicates(t *testing.T) {
	link := testLink(t, &cfg.Link{Receiver: "1", Line: "1"}, &cfg.Device{Account: "1234",
		Zones: []cfg.Zone{{Zone: 5, Name: "panic button desk"}}, Users: []cfg.User{{User: 3, Name: "night guard"}}})
	r := start(t, link)
	c := dial(t, "tcp", r.d.Addr())
	now := time.Now().UTC().Truncate(time.Second)
	alarm := encode(`"ADM-CID"0042R1L1#1234[#1234|1120 01 005]` + stamp(now))

	ack := c.exchange(alarm)
	if ack.Token != ACK || ack.Seq != "0042" || ack.Account != "1234" || ack.Receiver != "1" || ack.Line != "1" || ack.Encrypted {
		t.Errorf("answer %+v, want a plain ACK of 0042 for 1234 R1 L1", ack)
	}
	if h := r.out.next(t); h.Kind != model.KindHealth || h.Health.State != model.Online || h.Device != "panel-1" {
		t.Errorf("first message %+v, want panel-1 online", h)
	}
	ev := r.out.next(t)
	want := map[string]string{
		"account": "1234", "format": "ADM-CID", "code": "120", "qualifier": "1", "state": "active",
		"description": "panic", "partition": "1", "zone": "5", "zone_name": "panic button desk",
		"dc09_seq": "0042", "receiver": "1", "line": "1", "panel_time": now.Format(time.RFC3339), "encrypted": "false",
	}
	if ev.Kind != model.KindEvent || ev.Event.Kind != "panic" || ev.Event.Severity != model.Critical || !ev.Time.Equal(now) ||
		ev.Device != "panel-1" || ev.DeviceKind != "alarm_panel" || !maps.Equal(ev.Event.Details, want) {
		t.Errorf("event %+v %+v\nwant panic critical at %v with %v", ev, ev.Event, now, want)
	}

	// The ACK was lost: the panel sends the frame again.
	if a := c.exchange(alarm); a.Token != ACK || a.Seq != "0042" {
		t.Errorf("repeat answered %+v, want ACK", a)
	}
	r.out.none(t)

	// A gateway restart does not forget it.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	r2 := start(t, link)
	c2 := dial(t, "tcp", r2.d.Addr())
	if a := c2.exchange(alarm); a.Token != ACK {
		t.Errorf("repeat after restart answered %+v, want ACK", a)
	}
	if h := r2.out.next(t); h.Kind != model.KindHealth {
		t.Errorf("after restart: %+v, want health only", h)
	}
	r2.out.none(t)

	// The same sequence number with other data is another event (a panel
	// that restarted its count).
	c2.exchange(encode(`"ADM-CID"0042R1L1#1234[#1234|1401 01 003]` + stamp(now)))
	ev = r2.out.next(t)
	if ev.Event.Kind != "disarmed" || ev.Event.Details["user"] != "3" || ev.Event.Details["user_name"] != "night guard" || ev.Event.Details["zone"] != "" {
		t.Errorf("open by user 3: %+v", ev.Event)
	}
	p := r2.d.panels["1234"]
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counters["duplicates"] != 1 || p.counters["events"] != 1 || p.counters["acks"] != 2 {
		t.Errorf("counters after restart %v", p.counters)
	}
}

// TestAnswers covers what is not acknowledged: NAK for a timestamp out of
// the window, DUH for what cannot be taken, nothing for a damaged frame.
func TestAnswerKinds(t *testing.T) {
	key := "00112233445566778899aabbccddeeff"
	r := start(t, testLink(t, &cfg.Link{Receiver: "1"},
		&cfg.Device{Account: "1234"}, &cfg.Device{Account: "ABCD"}), "ABCD", key)
	c := dial(t, "tcp", r.d.Addr())
	null := func(seq string) []byte { return encode(`"NULL"` + seq + "L0#1234[]") }

	old := time.Now().Add(-5 * time.Minute)
	nak := c.exchange(encode(`"ADM-CID"0001L0#1234[#1234|1120 01 005]` + stamp(old)))
	if nak.Token != NAK || nak.Seq != "0000" || !nak.HasTime || time.Since(nak.Time).Abs() > 2*time.Second {
		t.Errorf("answer to an old timestamp %+v, want NAK with the receiver's time", nak)
	}
	future := c.exchange(encode(`"ADM-CID"0002L0#1234[#1234|1120 01 005]` + stamp(time.Now().Add(time.Minute))))
	if future.Token != NAK {
		t.Errorf("answer to a timestamp a minute ahead %+v, want NAK", future)
	}

	duhs := []struct{ name, text string }{
		{"unknown account", `"ADM-CID"0003L0#9999[#9999|1120 01 005]`},
		{"other receiver", `"ADM-CID"0004R2L0#1234[#1234|1120 01 005]`},
		{"unknown id", `"XYZ-ABC"0005L0#1234[#1234|1120 01 005]`},
		{"encrypted, no key", `"*ADM-CID"0006L0#1234[` + strings.Repeat("00", 32)},
		{"clear, with a key", `"ADM-CID"0007L0#ABCD[#ABCD|1120 01 005]`},
		{"wrong key", `"*NULL"0008L0#ABCD[` + strings.Repeat("00", 32)},
		{"data not Contact ID", `"ADM-CID"0009L0#1234[#1234|hello]`},
	}
	for _, d := range duhs {
		a := c.exchange(encode(d.text))
		if a.Token != DUH || a.Encrypted {
			t.Errorf("%s: answered %+v, want DUH", d.name, a)
		}
	}

	// A damaged frame gets no answer: the answer read next is the one to
	// the null message sent after it.
	good := null("0010")
	bad := bytes.Clone(good)
	bad[len(bad)-3] = 'X' // in the text: the CRC no longer fits
	c.send(bad)
	if a := c.exchange(good); a.Token != ACK || a.Seq != "0010" {
		t.Errorf("after a damaged frame: %+v, want the ACK of 0010", a)
	}
	// So does one longer than a frame may be; the connection goes on.
	c.send(append([]byte("\n"), bytes.Repeat([]byte("A"), 3*maxFrame)...))
	c.send([]byte("\r"))
	if a := c.exchange(null("0011")); a.Token != ACK || a.Seq != "0011" {
		t.Errorf("after an oversized frame: %+v, want the ACK of 0011", a)
	}
	got := r.d.Stats()
	for k, v := range map[string]uint64{"crc_errors": 1, "length_errors": 1, "unknown_accounts": 1} {
		if got[k] != v {
			t.Errorf("link counter %s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	p := r.d.panels["1234"]
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, v := range map[string]uint64{"naks": 2, "duhs": 4, "decrypt_errors": 1, "bad_frames": 3, "acks": 2, "link_tests": 2} {
		if p.counters[k] != v {
			t.Errorf("panel counter %s = %d, want %d (all: %v)", k, p.counters[k], v, p.counters)
		}
	}
}

// TestNotKept: when the gateway cannot keep an event the panel gets no
// answer. An event not kept at all is raised at the panel's next try; one
// sent from memory, not durable (held), is not raised again: the next try
// is answered as a repeat, and the alarm reaches the hub once.
func TestNotKept(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail error
		held bool
	}{
		{"not kept", errors.New("disk full"), false},
		{"held in memory", drivers.ErrHeld, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t, testLink(t, &cfg.Link{}, &cfg.Device{Account: "1234"}))
			c := dial(t, "tcp", r.d.Addr())
			alarm := plainFrame("ADM-CID", "0001", "L0#1234", "#1234|1130 01 002")
			if a := c.exchange(plainFrame("NULL", "0000", "L0#1234", "")); a.Token != ACK {
				t.Fatalf("null: %+v", a)
			}
			r.out.nextOf(t, model.KindHealth)
			r.out.setFail(tc.fail)
			c.send(alarm)
			if tc.held {
				if ev := r.out.next(t); ev.Event == nil || ev.Event.Kind != "burglary" {
					t.Fatalf("held: emitted %+v, want the burglary", ev)
				}
			}
			if a := c.exchange(plainFrame("NULL", "0002", "L0#1234", "")); a.Seq != "0002" {
				t.Fatalf("the event was answered: %+v", a)
			}
			r.out.setFail(nil)
			if a := c.exchange(alarm); a.Token != ACK || a.Seq != "0001" {
				t.Fatalf("retry: %+v, want ACK 0001", a)
			}
			if tc.held {
				select { // raised before the answer, if at all
				case m := <-r.out.ch:
					t.Errorf("the retry of a held event raised it again: %+v", m)
				default:
				}
			} else if ev := r.out.next(t); ev.Event == nil || ev.Event.Kind != "burglary" {
				t.Errorf("retry emitted %+v", ev)
			}
		})
	}
}

// TestSupervision: a panel that sends nothing for its supervision time is
// reported offline with the reason, and online at its next frame.
func TestSupervision(t *testing.T) {
	r := start(t, testLink(t, &cfg.Link{}, &cfg.Device{Account: "1234", Supervision: 200 * time.Millisecond}))
	began := time.Now()
	h := r.out.next(t)
	if h.Health == nil || h.Health.State != model.Offline || h.Health.Reason != "no message from panel account 1234 for 200ms: periodic tests stopped, or the panel's network is down" {
		t.Fatalf("%+v %+v, want offline", h, h.Health)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("offline after %s", took)
	}
	c := dial(t, "udp", r.d.Addr())
	if a := c.exchange(plainFrame("NULL", "0001", "L0#1234", "")); a.Token != ACK {
		t.Fatalf("null: %+v", a)
	}
	if h := r.out.next(t); h.Health == nil || h.Health.State != model.Online {
		t.Errorf("%+v, want online", h.Health)
	}
	if h := r.out.next(t); h.Health == nil || h.Health.State != model.Offline {
		t.Errorf("%+v, want offline again", h.Health)
	}
}

// TestConnections: connections beyond max_connections are refused, and an
// idle one is closed.
func TestConnections(t *testing.T) {
	r := start(t, testLink(t, &cfg.Link{MaxConnections: 1, IdleTimeout: 300 * time.Millisecond, Transport: cfg.TCP}, &cfg.Device{Account: "1234"}))
	first := dial(t, "tcp", r.d.Addr())
	if a := first.exchange(plainFrame("NULL", "0001", "L0#1234", "")); a.Token != ACK {
		t.Fatalf("null: %+v", a)
	}
	second := dial(t, "tcp", r.d.Addr())
	second.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := second.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("second connection: %v, want it closed", err)
	}
	first.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := first.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: %v, want it closed", err)
	}
	if _, err := net.Dial("udp", r.d.Addr()); err != nil {
		t.Fatal(err)
	}
	if got := r.d.Stats()["refused_connections"]; got != 1 {
		t.Errorf("refused_connections = %d", got)
	}
}

// TestEncryptedUDP: an encrypted SIA-DCS frame over UDP with a 192-bit
// key, answered with an encrypted ACK.
func TestEncryptedUDP(t *testing.T) {
	const hexKey = "00112233445566778899aabbccddeeff0011223344556677"
	key := mustHex(t, hexKey)
	r := start(t, testLink(t, &cfg.Link{}, &cfg.Device{Account: "AB12", Zones: []cfg.Zone{{Zone: 1, Name: "front door"}}}), "AB12", hexKey)
	now := time.Now().UTC().Truncate(time.Second)
	sealed, err := seal(key, "|#AB12|Nri1/PA001^desk^]"+stamp(now))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, "udp", r.d.Addr())
	a := c.exchange(encode(`"*SIA-DCS"0100R0L0#AB12[` + strings.ToUpper(hex.EncodeToString(sealed))))
	if a.Token != ACK || !a.Encrypted || a.Seq != "0100" {
		t.Fatalf("answer %+v, want an encrypted ACK", a)
	}
	if err := a.Decrypt(key); err != nil || !a.HasTime {
		t.Errorf("ACK does not decrypt: %v", err)
	}
	r.out.nextOf(t, model.KindHealth)
	ev := r.out.next(t)
	d := ev.Event.Details
	if ev.Event.Kind != "panic" || d["format"] != "SIA-DCS" || d["code"] != "PA" || d["zone"] != "1" || d["zone_name"] != "front door" ||
		d["text"] != "desk" || d["encrypted"] != "true" || d["state"] != "active" || d["partition"] != "1" {
		t.Errorf("event %+v", ev.Event)
	}
}

// TestSupervisionMistypedAccount: a panel that is silent while frames of
// an account no device has come says so: one of the two accounts is
// mistyped.
func TestSupervisionMistypedAccount(t *testing.T) {
	r := start(t, testLink(t, &cfg.Link{}, &cfg.Device{Account: "1234", Supervision: 300 * time.Millisecond}))
	c := dial(t, "udp", r.d.Addr())
	if a := c.exchange(plainFrame("NULL", "0001", "L0#1235", "")); a.Token != DUH {
		t.Fatalf("a link test of account 1235: %+v, want DUH", a)
	}
	h := r.out.next(t)
	want := "no message from panel account 1234 for 300ms, while frames of account 1235, which no device has, come on " + r.d.name + ": check the account set in the panel against the station file's"
	if h.Health == nil || h.Health.State != model.Offline || h.Health.Reason != want {
		t.Fatalf("%+v, want offline: %s", h.Health, want)
	}
}

// TestSupervisionWrongKey: a panel whose frames come with another key is
// degraded with the reason, then offline after its supervision time with
// that reason, and stays offline while such frames come (no flapping, no
// device_lost at every supervision time); a frame it can take brings it
// online. One silent that sends such frames again is offline with their
// reason.
func TestSupervisionWrongKey(t *testing.T) {
	const hexKey = "00112233445566778899aabbccddeeff"
	r := start(t, testLink(t, &cfg.Link{}, &cfg.Device{Account: "AB12", Supervision: 300 * time.Millisecond}), "AB12", hexKey)
	c := dial(t, "udp", r.d.Addr())
	send := func(key, seq, want string) {
		t.Helper()
		var sealed []byte
		var err error
		if key == hexKey {
			sealed, err = seal(mustHex(t, key), "]"+stamp(time.Now().UTC()))
		} else {
			// Sealed with another key, it decrypts to noise, which on rare
			// draws of seal's random pad reads as a message without its
			// time (answered NAK): a fixed pad and text fix the noise.
			sealed, err = crypt(mustHex(t, key), []byte("PADPADPADPA]"+stamp(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))), true)
		}
		if err != nil {
			t.Fatal(err)
		}
		if a := c.exchange(encode(`"*NULL"` + seq + `L0#AB12[` + strings.ToUpper(hex.EncodeToString(sealed)))); a.Token != want {
			t.Fatalf("frame %s: answered %+v, want %s", seq, a, want)
		}
	}
	health := func(state model.HealthState, reason func(string) bool, when string) string {
		t.Helper()
		h := r.out.nextOf(t, model.KindHealth).Health
		if h.State != state || !reason(h.Reason) {
			t.Fatalf("%s: %s %q, want %s", when, h.State, h.Reason, state)
		}
		return h.Reason
	}
	any := func(string) bool { return true }
	const wrong = "ffeeddccbbaa99887766554433221100"
	const refusal = "no message from panel account AB12 taken for 300ms; its frames come, but are refused: "
	const suffix = " (wrong key?): check that the panel has the key of key_file"

	send(wrong, "0001", DUH)
	refused := health(model.Degraded, func(r string) bool { return strings.HasSuffix(r, suffix) }, "after a frame with another key")
	health(model.Offline, func(r string) bool { return r == refusal+refused }, "after its supervision time")
	for i, seq := range []string{"0002", "0003", "0004"} {
		send(wrong, seq, DUH)
		if i < 2 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	send(hexKey, "0005", ACK)
	health(model.Online, any, "after frames with another key and one with its own (and nothing between)")

	health(model.Offline, func(r string) bool {
		return strings.HasSuffix(r, "periodic tests stopped, or the panel's network is down")
	}, "silent")
	send(wrong, "0006", DUH)
	health(model.Offline, func(r string) bool {
		return strings.HasPrefix(r, refusal+"account AB12: ") && strings.HasSuffix(r, suffix)
	}, "silent, then a frame with another key")
	send(wrong, "0007", DUH)
	send(hexKey, "0008", ACK)
	health(model.Online, any, "then one with its own (and nothing between)")
}
