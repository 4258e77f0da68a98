package device

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
	"outpost/firmware-sim/slave"
)

func bit(n int) *int { return &n }

func constant(v float64) *configs.Sim { return &configs.Sim{Wave: "constant", Value: v} }

// testTemplate maps a little of everything, with constant values.
func testTemplate(gaps bool) *configs.Template {
	return &configs.Template{
		Name:     "t",
		Kind:     "test",
		Protocol: "modbus", Body: &modbus.Template{ReadGaps: gaps, Registers: []modbus.Register{
			{Signal: "temp", Table: modbus.Input, Address: 0, Type: modbus.TypeInt16, Scale: 0.1, Sim: constant(21.3)},
			{Signal: "volt", Table: modbus.Input, Address: 1, Type: modbus.TypeFloat32, Order: modbus.ABCD, Scale: 1, Sim: constant(229.5)},
			{Signal: "far", Table: modbus.Input, Address: 10, Type: modbus.TypeUint16, Scale: 1, Sim: constant(7)},
			{Signal: "armed", Table: modbus.Holding, Address: 0, Type: modbus.TypeBool, Bit: bit(0), Scale: 1, Sim: constant(1)},
			{Signal: "fault", Table: modbus.Holding, Address: 0, Type: modbus.TypeBool, Bit: bit(3), Scale: 1, Sim: constant(1)},
			{Signal: "setpoint", Table: modbus.Holding, Address: 1, Type: modbus.TypeUint16, Scale: 1, Sim: constant(1234)},
			{Signal: "relay1", Table: modbus.Coil, Address: 0, Type: modbus.TypeBool, Scale: 1, Sim: constant(1)},
			{Signal: "relay2", Table: modbus.Coil, Address: 1, Type: modbus.TypeBool, Scale: 1, Sim: constant(0)},
			{Signal: "door", Table: modbus.Discrete, Address: 0, Type: modbus.TypeBool, Scale: 1, Sim: constant(1)},
		},
		}}
}

// sink records what was served, and the alarms raised.
type sink struct {
	mu     sync.Mutex
	rs     []sim.Reading
	raised []sim.Raised
}

func (s *sink) Raised(r sim.Raised) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.raised = append(s.raised, r)
}

func (s *sink) Served(dev string, rs []sim.Reading) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rs = append(s.rs, rs...)
}

func (s *sink) take() []sim.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.rs
	s.rs = nil
	return rs
}

func newDevice(t *testing.T, gaps bool) (*Device, *sink) {
	t.Helper()
	sk := &sink{}
	d, err := New(configs.Device{ID: "dev", Template: "t", Settings: &modbus.Device{UnitID: 1}}, testTemplate(gaps), Options{Seed: 1, Sink: sk})
	if err != nil {
		t.Fatal(err)
	}
	return d, sk
}

func pdu(b ...byte) []byte { return b }

// TestProcess drives the device through the PDU, as a master would.
func TestProcess(t *testing.T) {
	cases := []struct {
		name   string
		gaps   bool
		req    []byte
		resp   []byte
		served []sim.Reading
	}{
		{"read input whole signals", true, pdu(4, 0, 0, 0, 3), pdu(4, 6, 0x00, 0xD5, 0x43, 0x65, 0x80, 0x00),
			[]sim.Reading{{Signal: "temp", Value: signal.Num(21.3)}, {Signal: "volt", Value: signal.Num(229.5)}}},
		{"half a float is not a reading", true, pdu(4, 0, 2, 0, 1), pdu(4, 2, 0x80, 0x00), nil},
		{"gaps read as zero", true, pdu(4, 0, 2, 0, 9), pdu(4, 18, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7),
			[]sim.Reading{{Signal: "far", Value: signal.Num(7)}}},
		{"past the highest address", true, pdu(4, 0, 0, 0, 12), pdu(0x84, 2), nil},
		{"before the lowest address", true, pdu(3, 0xFF, 0xFF, 0, 1), pdu(0x83, 2), nil},
		{"gaps refused", false, pdu(4, 0, 0, 0, 11), pdu(0x84, 2), nil},
		{"mapped reads without gaps", false, pdu(4, 0, 10, 0, 1), pdu(4, 2, 0, 7), []sim.Reading{{Signal: "far", Value: signal.Num(7)}}},
		{"unmapped table", true, pdu(3, 0, 9, 0, 1), pdu(0x83, 2), nil},
		{"bits in a holding register", true, pdu(3, 0, 0, 0, 2), pdu(3, 4, 0x00, 0x09, 0x04, 0xD2),
			[]sim.Reading{{Signal: "armed", Value: signal.B(true)}, {Signal: "fault", Value: signal.B(true)}, {Signal: "setpoint", Value: signal.Num(1234)}}},
		{"coils", true, pdu(1, 0, 0, 0, 2), pdu(1, 1, 0x01), []sim.Reading{{Signal: "relay1", Value: signal.B(true)}, {Signal: "relay2", Value: signal.B(false)}}},
		{"discrete inputs", true, pdu(2, 0, 0, 0, 1), pdu(2, 1, 0x01), []sim.Reading{{Signal: "door", Value: signal.B(true)}}},
		{"126 registers", true, pdu(4, 0, 0, 0, 126), pdu(0x84, 3), nil},
		{"0 registers", true, pdu(3, 0, 0, 0, 0), pdu(0x83, 3), nil},
		{"2001 coils", true, pdu(1, 0, 0, 0x07, 0xD1), pdu(0x81, 3), nil},
		{"past 65535", true, pdu(3, 0xFF, 0xFF, 0, 2), pdu(0x83, 2), nil},
		{"short read", true, pdu(3, 0, 0, 0), pdu(0x83, 3), nil},
		{"unsupported function", true, pdu(0x2B, 0x0E, 1, 0), pdu(0xAB, 1), nil},
		{"diagnostics unsupported", true, pdu(8, 0, 0, 0x12, 0x34), pdu(0x88, 1), nil},
		{"write coil to unmapped", true, pdu(5, 0, 5, 0xFF, 0), pdu(0x85, 2), nil},
		{"write coil bad value", true, pdu(5, 0, 0, 0x12, 0x34), pdu(0x85, 3), nil},
		{"write register to input table address", true, pdu(6, 0, 2, 0, 1), pdu(0x86, 2), nil},
		{"write multiple bad count", true, pdu(16, 0, 1, 0, 1, 3, 0, 1, 2), pdu(0x90, 3), nil},
		{"write multiple coils bad count", true, pdu(15, 0, 0, 0, 2, 2, 3, 0), pdu(0x8F, 3), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, sk := newDevice(t, c.gaps)
			resp, commit := slave.Process(d, c.req)
			if !bytes.Equal(resp, c.resp) {
				t.Fatalf("Process(% x) = % x, want % x", c.req, resp, c.resp)
			}
			if len(sk.take()) != 0 {
				t.Fatal("readings served before the response was sent")
			}
			if commit != nil {
				commit()
			}
			if got := sk.take(); !slices.Equal(got, c.served) {
				t.Errorf("served %v, want %v", got, c.served)
			}
			st := d.Stats()
			wantExc := int64(0)
			if c.resp[0]&0x80 != 0 {
				wantExc = 1
			}
			if st.Polls != 1 || st.ReadingsServed != int64(len(c.served)) || st.Exceptions != wantExc || st.CRCErrors != 0 || len(st.Writes) != 0 {
				t.Errorf("stats = %+v", st)
			}
		})
	}
}

// TestWritesReadBack: what a master writes reads back, and is what the
// served log says the master must decode.
func TestWritesReadBack(t *testing.T) {
	d, sk := newDevice(t, true)
	steps := []struct {
		req, resp []byte
		served    []sim.Reading
	}{
		{pdu(5, 0, 0, 0, 0), pdu(5, 0, 0, 0, 0), nil},
		{pdu(1, 0, 0, 0, 2), pdu(1, 1, 0x00), []sim.Reading{{Signal: "relay1", Value: signal.B(false)}, {Signal: "relay2", Value: signal.B(false)}}},
		{pdu(15, 0, 0, 0, 2, 1, 0x02), pdu(15, 0, 0, 0, 2), nil},
		{pdu(1, 0, 0, 0, 2), pdu(1, 1, 0x02), []sim.Reading{{Signal: "relay1", Value: signal.B(false)}, {Signal: "relay2", Value: signal.B(true)}}},
		{pdu(6, 0, 1, 0x00, 0x63), pdu(6, 0, 1, 0x00, 0x63), nil},
		{pdu(3, 0, 1, 0, 1), pdu(3, 2, 0x00, 0x63), []sim.Reading{{Signal: "setpoint", Value: signal.Num(99)}}},
		// Clearing bit 0 of the status register turns "armed" off, keeps
		// "fault" on.
		{pdu(16, 0, 0, 0, 2, 4, 0x00, 0x08, 0x00, 0x07), pdu(16, 0, 0, 0, 2), nil},
		{pdu(3, 0, 0, 0, 2), pdu(3, 4, 0x00, 0x08, 0x00, 0x07),
			[]sim.Reading{{Signal: "armed", Value: signal.B(false)}, {Signal: "fault", Value: signal.B(true)}, {Signal: "setpoint", Value: signal.Num(7)}}},
	}
	for i, s := range steps {
		resp, commit := slave.Process(d, s.req)
		if !bytes.Equal(resp, s.resp) {
			t.Fatalf("step %d: Process(% x) = % x, want % x", i, s.req, resp, s.resp)
		}
		if commit != nil {
			commit()
		}
		if got := sk.take(); !slices.Equal(got, s.served) {
			t.Errorf("step %d: served %v, want %v", i, got, s.served)
		}
	}
	// Each write counts once for every signal it touched; reads do not.
	want := map[string]int64{"relay1": 2, "relay2": 1, "setpoint": 2, "armed": 1, "fault": 1}
	if got := d.Stats().Writes; !maps.Equal(got, want) {
		t.Errorf("writes %v, want %v", got, want)
	}
}

// TestActions: a press forces an input on and lets it go after its hold,
// each change logged as the alarm the template's rule names; reads serve
// the forced values.
func TestActions(t *testing.T) {
	tm := &configs.Template{Name: "pb", Kind: "panic_button", Protocol: "modbus", Body: &modbus.Template{Registers: []modbus.Register{
		{Signal: "pressed", Table: modbus.Discrete, Address: 0, Type: modbus.TypeBool, Scale: 1,
			Event: &configs.EventRule{Kind: "panic", Severity: "critical", Clear: true}},
		{Signal: "cover", Table: modbus.Holding, Address: 0, Type: modbus.TypeBool, Bit: bit(2), Scale: 1,
			Event: &configs.EventRule{Kind: "tamper", Severity: "warning"}},
	}}}
	sk := &sink{}
	d, err := New(configs.Device{ID: "pb-1", Settings: &modbus.Device{UnitID: 1}}, tm, Options{Seed: 1, Sink: sk})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	read := func() []byte {
		resp, _ := slave.Process(d, pdu(2, 0, 0, 0, 1))
		return resp
	}
	if got := read(); !bytes.Equal(got, pdu(2, 1, 0)) {
		t.Fatalf("before the press: % x", got)
	}
	if err := d.Act(ctx, "press", map[string]string{"hold": "50ms"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !bytes.Equal(got, pdu(2, 1, 1)) {
		t.Errorf("during the press: % x", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Equal(read(), pdu(2, 1, 0)) {
		if time.Now().After(deadline) {
			t.Fatal("the button was never let go")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// With wait, the press is done only once the button is let go.
	if err := d.Act(ctx, "press", map[string]string{"hold": "20ms", "wait": "true"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !bytes.Equal(got, pdu(2, 1, 0)) {
		t.Errorf("after a press with wait: % x, want the button let go", got)
	}
	if err := d.Act(ctx, "tamper", nil); err != nil {
		t.Fatal(err)
	}
	if resp, _ := slave.Process(d, pdu(3, 0, 0, 0, 1)); !bytes.Equal(resp, pdu(3, 2, 0, 4)) {
		t.Errorf("tampered status register % x, want bit 2", resp)
	}
	sk.mu.Lock()
	var got []string
	for _, r := range sk.raised {
		got = append(got, r.Device+" "+r.Kind+" "+r.State+" "+r.Source)
	}
	sk.mu.Unlock()
	want := []string{"pb-1 panic active modbus", "pb-1 panic cleared modbus", "pb-1 panic active modbus", "pb-1 panic cleared modbus", "pb-1 tamper active modbus"}
	if !slices.Equal(got, want) {
		t.Errorf("raised %q, want %q", got, want)
	}
	for _, c := range []struct {
		action string
		args   map[string]string
		want   string
	}{
		{"press", map[string]string{"signal": "nope"}, `no input "nope" (have pressed, cover)`},
		{"press", map[string]string{"hold": "soon"}, "hold=soon: want a duration such as 300ms"},
		{"press", map[string]string{"wait": "maybe"}, "wait=maybe: want true or false"},
		{"set", map[string]string{"value": "maybe"}, `value="maybe": want true or false`},
		{"dance", nil, `unknown action "dance" (want one of: press [signal=pressed] [hold=300ms] [wait=false] (on, then off after hold; with wait, done once off); hold [signal=pressed] (on until release); release [signal=pressed]; tamper (cover on until release signal=cover); set signal=pressed|cover value=true|false)`},
	} {
		if err := d.Act(ctx, c.action, c.args); err == nil || err.Error() != c.want {
			t.Errorf("%s %v: %v, want %q", c.action, c.args, err, c.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	tm := testTemplate(true)
	tm.Body.(*modbus.Template).Registers[0].Sim = &configs.Sim{Wave: "square"}
	_, err := New(configs.Device{ID: "dev", Settings: &modbus.Device{UnitID: 1}}, tm, Options{})
	if err == nil || err.Error() != `device dev: signal dev/temp: unknown wave "square"` {
		t.Errorf("New with an unknown wave: %v", err)
	}
	_, err = New(configs.Device{ID: "dev", Template: "nope", Settings: &modbus.Device{UnitID: 1}}, nil, Options{})
	if err == nil || err.Error() != `device dev: no template "nope"` {
		t.Errorf("New without a template: %v", err)
	}
}

// TestConsistentResponse: a changing signal has one value per response, and
// the served value is what its registers say.
func TestConsistentResponse(t *testing.T) {
	gaps := true
	tm := &configs.Template{Name: "c", Kind: "test", Protocol: "modbus", Body: &modbus.Template{ReadGaps: gaps, Registers: []modbus.Register{
		{Signal: "count", Table: modbus.Input, Address: 0, Type: modbus.TypeUint32, Scale: 1, Sim: &configs.Sim{Wave: "counter", Rate: 1000}},
	}}}
	var now time.Time
	start := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sk := &sink{}
	d, err := New(configs.Device{ID: "dev", Settings: &modbus.Device{UnitID: 1}}, tm, Options{Start: start, Now: func() time.Time { return now }, Sink: sk})
	if err != nil {
		t.Fatal(err)
	}
	for i, el := range []time.Duration{0, 1500 * time.Millisecond, 70 * time.Second} {
		now = start.Add(el)
		resp, commit := slave.Process(d, pdu(4, 0, 0, 0, 2))
		commit()
		raw := uint32(resp[2])<<24 | uint32(resp[3])<<16 | uint32(resp[4])<<8 | uint32(resp[5])
		want := float64(el.Milliseconds())
		if float64(raw) != want {
			t.Errorf("step %d: raw %d, want %v", i, raw, want)
		}
		if got := sk.take(); !slices.Equal(got, []sim.Reading{{Signal: "count", Value: signal.Num(want)}}) {
			t.Errorf("step %d: served %v", i, got)
		}
	}
}

// TestEmbeddedStations builds every device of the shipped stations of
// Modbus devices only and reads each of its signals whole: every template
// encodes. (The others name files of the box they run on, a password
// file, that the station loader reads; the testbench runs them.)
func TestEmbeddedStations(t *testing.T) {
	files := []string{"police-room.yaml"}
	for _, f := range files {
		st, err := configs.LoadEmbedded(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, d := range st.Devices {
			sk := &sink{}
			dev, err := New(d, st.Templates[d.Template], Options{Seed: 1, Sink: sk})
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			tm := st.Templates[d.Template]
			for _, r := range tm.Body.(*modbus.Template).Registers {
				fc := map[modbus.Table]byte{modbus.Coil: 1, modbus.Discrete: 2, modbus.Holding: 3, modbus.Input: 4}[r.Table]
				resp, commit := slave.Process(dev, pdu(fc, byte(r.Address>>8), byte(r.Address), 0, byte(r.Span())))
				if resp[0] != fc || commit == nil {
					t.Fatalf("%s %s %s: % x", f, d.ID, r.Signal, resp)
				}
				commit()
			}
			got := map[string]bool{}
			for _, rd := range sk.take() {
				got[rd.Signal] = true
			}
			for _, r := range tm.Body.(*modbus.Template).Registers {
				if !got[r.Signal] {
					t.Errorf("%s %s: %s never served", f, d.ID, r.Signal)
				}
			}
		}
	}
}

func BenchmarkReadInput(b *testing.B) {
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		b.Fatal(err)
	}
	dev, err := New(st.Devices[0], st.Templates[st.Devices[0].Template], Options{Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	req := pdu(4, 0, 0, 0, 6) // xy-md02: 3 signals across a gap
	b.ReportAllocs()
	for b.Loop() {
		_, commit := slave.Process(dev, req)
		commit()
	}
}

// TestEventsServed counts the edges a master reading every response sees:
// the first true, each false->true, and true->false only for rules that clear.
func TestEventsServed(t *testing.T) {
	d := &Device{
		rules: map[string]*configs.EventRule{
			"smoke":  {Kind: "smoke", Clear: true},
			"tamper": {Kind: "tamper"},
		},
		lastBool: map[string]bool{},
	}
	serve := func(sig string, vals ...bool) {
		for _, v := range vals {
			d.countEdges([]sim.Reading{{Signal: sig, Value: signal.B(v)}, {Signal: "temperature", Value: signal.Num(1)}})
		}
	}
	serve("smoke", false, true, true, false, false, true) // up, clear, up
	serve("tamper", true, false, true, true)              // up, up (no clears)
	if got := d.Stats().EventsServed; got != 5 {
		t.Errorf("EventsServed = %d, want 5 (smoke: 2 raises and 1 clear; tamper: 2 raises)", got)
	}
}
