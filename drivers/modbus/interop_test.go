package modbus

import (
	"testing"
	"time"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/gateway/model"
)

// everything is a template with every type and byte order; everythingSpec
// holds its registers as the slave stores them, written out by hand, and
// everythingWant the values the driver must decode.
func everything() *tTemplate {
	r := func(sig string, table mb.Table, addr int, typ mb.DataType, order mb.ByteOrder) mb.Register {
		return mb.Register{Signal: sig, Table: table, Address: addr, Type: typ, Order: order, Scale: 1}
	}
	regs := []mb.Register{
		r("u16", mb.Holding, 0, mb.TypeUint16, "ABCD"),
		r("i16", mb.Holding, 1, mb.TypeInt16, "ABCD"),
		r("u32", mb.Holding, 2, mb.TypeUint32, "ABCD"),
		r("i32_cdab", mb.Holding, 4, mb.TypeInt32, "CDAB"),
		r("f32_badc", mb.Holding, 6, mb.TypeFloat32, "BADC"),
		r("f32_dcba", mb.Holding, 8, mb.TypeFloat32, "DCBA"),
		r("f64_dcba", mb.Holding, 10, mb.TypeFloat64, "DCBA"),
		r("f64_abcd", mb.Holding, 14, mb.TypeFloat64, "ABCD"),
		r("text", mb.Holding, 20, mb.TypeString, "ABCD"),
		r("flag1", mb.Holding, 24, mb.TypeBool, "ABCD"),
		r("flag0", mb.Holding, 24, mb.TypeBool, "ABCD"),
		r("u16_badc", mb.Holding, 25, mb.TypeUint16, "BADC"),
		r("in_u16", mb.Input, 0, mb.TypeUint16, "ABCD"),
		r("in_f32", mb.Input, 50, mb.TypeFloat32, "ABCD"),
		r("coil0", mb.Coil, 0, mb.TypeBool, ""),
		r("coil1", mb.Coil, 1, mb.TypeBool, ""),
		r("coil2", mb.Coil, 2, mb.TypeBool, ""),
		r("di5", mb.Discrete, 5, mb.TypeBool, ""),
	}
	regs[0].Scale = 0.1
	regs[1].Offset = 0.5
	regs[5].Scale = 2
	regs[8].Length = 4
	regs[9].Bit, regs[10].Bit = bit(1), bit(0)
	regs[12].Scale, regs[12].Offset, regs[12].Unit = 0.01, -40, "V"
	return &tTemplate{Name: "everything", Kind: "test_kind", ReadGaps: true, Registers: regs}
}

var everythingSpec = map[string]map[int]int{
	"hr": {
		0: 0x1234, 1: 0xFFFE, 2: 0x1234, 3: 0x5678, 4: 0x7960, 5: 0xFFFE,
		6: 0x6643, 7: 0x0080, 8: 0x0080, 9: 0x6643,
		10: 0x0000, 11: 0x0000, 12: 0x004A, 13: 0x9340,
		14: 0x4093, 15: 0x4A00, 16: 0, 17: 0,
		20: 0x5550, 21: 0x532D, 22: 0x334B, 23: 0x0000,
		24: 0x0002, 25: 0x3412,
	},
	"ir": {0: 26000, 50: 0x4366, 51: 0x8000},
	"co": {0: 1, 1: 0, 2: 1},
	"di": {5: 1},
}

var everythingWant = map[string]model.Value{
	"u16":      model.Number(466),
	"i16":      model.Number(-1.5),
	"u32":      model.Number(305419896),
	"i32_cdab": model.Number(-100000),
	"f32_badc": model.Number(230.5),
	"f32_dcba": model.Number(461),
	"f64_dcba": model.Number(1234.5),
	"f64_abcd": model.Number(1234.5),
	"text":     model.String("UPS-3K"),
	"flag1":    model.Bool(true),
	"flag0":    model.Bool(false),
	"u16_badc": model.Number(4660),
	"in_u16":   model.Number(220),
	"in_f32":   model.Number(230.5),
	"coil0":    model.Bool(true),
	"coil1":    model.Bool(false),
	"coil2":    model.Bool(true),
	"di5":      model.Bool(true),
}

// checkReadings compares a telemetry message with everythingWant.
func checkReadings(t *testing.T, m model.Message, tmpl *tTemplate) {
	t.Helper()
	if m.Kind != model.KindTelemetry || m.DeviceKind != tmpl.Kind || m.Time.IsZero() || m.Time.Location() != time.UTC {
		t.Errorf("message header: kind %s device kind %s time %v", m.Kind, m.DeviceKind, m.Time)
	}
	if len(m.Readings) != len(tmpl.Registers) {
		t.Fatalf("%d readings, want %d", len(m.Readings), len(tmpl.Registers))
	}
	for i, r := range m.Readings {
		reg := tmpl.Registers[i]
		want := everythingWant[reg.Signal]
		if r.Signal != reg.Signal || r.Unit != reg.Unit || r.Quality != model.Good || !r.Value.Equal(want) {
			t.Errorf("reading %d = {%s %v %q %s}, want {%s %v %q good}", i, r.Signal, r.Value, r.Unit, r.Quality, reg.Signal, want, reg.Unit)
		}
	}
}

func TestInteropTCP(t *testing.T) {
	port := startSlave(t, slaveSpec{1: everythingSpec, 7: everythingSpec}, "tcp")
	tmpl := everything()
	ep := &tEndpoint{ID: "lan", Protocol: "modbus-tcp", Address: "127.0.0.1:" + port, Timeout: time.Second, Retries: 1}
	link := tLink{Station: station(tmpl), Endpoint: ep, Devices: []*tDevice{
		{ID: "meter-a", Template: "everything", Endpoint: "lan", UnitID: 1, Poll: 50 * time.Millisecond},
		{ID: "meter-b", Template: "everything", Endpoint: "lan", UnitID: 7, Poll: 50 * time.Millisecond},
	}}
	r := runDriver(t, link)
	for _, dev := range []string{"meter-a", "meter-b"} {
		for i := 0; i < 3; i++ {
			checkReadings(t, r.next(t, dev, model.KindTelemetry, 5*time.Second), tmpl)
		}
		h := r.next(t, dev, model.KindHealth, 5*time.Second)
		if h.Health.State != model.Online || h.Health.Reason != "" || h.Health.Counters["polls"] != 1 || h.Health.Counters["requests"] != 4 {
			t.Errorf("%s health = %+v, want online after 1 poll of 4 requests", dev, *h.Health)
		}
	}
}

func TestInteropRTU(t *testing.T) {
	slaveEnd, ourEnd := socatPair(t)
	// Our end runs 8E1 (a pty accepts any mode); the pymodbus slave must
	// run without parity, as it does not answer on a pty set to even parity.
	startSlave(t, slaveSpec{1: everythingSpec, 2: everythingSpec}, "serial", slaveEnd, "19200", "N")
	tmpl := everything()
	bus := &tBus{ID: "rs485-1", Protocol: "modbus-rtu", Port: ourEnd, Baud: 19200, Parity: configs.ParityEven,
		DataBits: 8, StopBits: 1, Timeout: 500 * time.Millisecond, Retries: 1, Turnaround: 5 * time.Millisecond}
	link := tLink{Station: station(tmpl), Bus: bus, Devices: []*tDevice{
		{ID: "th-1", Template: "everything", Bus: "rs485-1", UnitID: 1, Poll: 50 * time.Millisecond},
		{ID: "th-2", Template: "everything", Bus: "rs485-1", UnitID: 2, Poll: 50 * time.Millisecond},
	}}
	plan, _ := Plan(tmpl.body(), BusCost(bus.settings()))
	t.Logf("RTU plan at 19200 8E1: %s", planString(plan))
	r := runDriver(t, link)
	for _, dev := range []string{"th-1", "th-2"} {
		for i := 0; i < 3; i++ {
			checkReadings(t, r.next(t, dev, model.KindTelemetry, 5*time.Second), tmpl)
		}
	}
}

// TestIsolation: a device whose unit id nobody answers goes offline, saying
// that its unit id, alone on its bus, may be wrong or its bus bad, and does
// not slow a healthy device on another bus.
func TestIsolation(t *testing.T) {
	deadSlave, deadOurs := socatPair(t)
	okSlave, okOurs := socatPair(t)
	startSlave(t, slaveSpec{1: everythingSpec}, "serial", deadSlave, "9600", "N")
	startSlave(t, slaveSpec{1: everythingSpec}, "serial", okSlave, "9600", "N")
	tmpl := &tTemplate{Name: "th", Kind: "temp_humidity", Registers: []mb.Register{
		{Signal: "temperature", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 0.01, Offset: -40, Unit: "V"},
	}}
	mkBus := func(id, port string) *tBus {
		return &tBus{ID: id, Protocol: "modbus-rtu", Port: port, Baud: 9600, Parity: "none", DataBits: 8, StopBits: 1,
			Timeout: 150 * time.Millisecond, Retries: 1, Turnaround: 5 * time.Millisecond}
	}
	const poll = 100 * time.Millisecond
	st := station(tmpl)
	dead := runDriver(t, tLink{Station: st, Bus: mkBus("bus-a", deadOurs), Devices: []*tDevice{
		{ID: "ghost", Template: "th", Bus: "bus-a", UnitID: 9, Poll: poll},
	}})
	ok := runDriver(t, tLink{Station: st, Bus: mkBus("bus-b", okOurs), Devices: []*tDevice{
		{ID: "healthy", Template: "th", Bus: "bus-b", UnitID: 1, Poll: poll},
	}})

	// The ghost: bad readings with no value, degraded, then offline after
	// three polls without an answer.
	m := dead.next(t, "ghost", model.KindTelemetry, 2*time.Second)
	if r := m.Readings[0]; r.Quality != model.Bad || !r.Value.IsZero() || r.Signal != "temperature" {
		t.Errorf("ghost reading %+v, want bad with no value", r)
	}
	wantReason := "no answer from unit 9 on bus-a: wrong unit id, or device off; or check wiring, port, baud rate and parity"
	h := dead.next(t, "ghost", model.KindHealth, 2*time.Second).Health
	if h.State != model.Degraded || h.Reason != wantReason {
		t.Errorf("ghost first health %s %q, want degraded %q", h.State, h.Reason, wantReason)
	}
	h = dead.next(t, "ghost", model.KindHealth, 3*time.Second).Health
	if h.State != model.Offline || h.Reason != wantReason {
		t.Errorf("ghost health %s %q, want offline %q", h.State, h.Reason, wantReason)
	}
	// Every try counts: the first poll tried twice (one retry), the next
	// two once (a silent device gets no retries).
	if c := h.Counters; c["polls"] != 3 || c["failures"] != 3 || c["timeouts"] != 4 {
		t.Errorf("ghost counters %v, want 3 polls, 3 failures, 4 timeouts", c)
	}

	// Meanwhile the healthy device kept its rate: 10 polls in ~1 s.
	first := ok.next(t, "healthy", model.KindTelemetry, 2*time.Second)
	var last model.Message
	for i := 0; i < 10; i++ {
		last = ok.next(t, "healthy", model.KindTelemetry, time.Second)
		if r := last.Readings[0]; r.Quality != model.Good || !r.Value.Equal(model.Number(220)) {
			t.Fatalf("healthy reading %+v", r)
		}
	}
	// Had the ghost's timeouts (2 x 150 ms a poll) held the healthy device
	// up, 10 polls would take 3 s; allow scheduling slack on a busy machine.
	if gap := last.Time.Sub(first.Time); gap > 15*poll {
		t.Errorf("10 polls of the healthy device took %v, want about %v", gap, 10*poll)
	}
	t.Logf("healthy device: 10 polls in %v while the ghost timed out", last.Time.Sub(first.Time))
}

// TestBusSharedFairly: a dead unit on the same bus costs bus time but a
// healthy neighbour keeps answering with good readings, and the dead one
// backs off.
func TestBusSharedFairly(t *testing.T) {
	slave, ours := socatPair(t)
	startSlave(t, slaveSpec{1: everythingSpec}, "serial", slave, "9600", "N")
	tmpl := &tTemplate{Name: "th", Kind: "temp_humidity", Registers: []mb.Register{
		{Signal: "temperature", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 1},
	}}
	bus := &tBus{ID: "bus", Protocol: "modbus-rtu", Port: ours, Baud: 9600, Timeout: 50 * time.Millisecond}
	r := runDriver(t, tLink{Station: station(tmpl), Bus: bus, Devices: []*tDevice{
		{ID: "ghost", Template: "th", Bus: "bus", UnitID: 9, Poll: 50 * time.Millisecond},
		{ID: "healthy", Template: "th", Bus: "bus", UnitID: 1, Poll: 50 * time.Millisecond},
	}})
	var ghostPolls, good int
	deadline := time.After(1500 * time.Millisecond)
loop:
	for {
		select {
		case m := <-r.msgs:
			if m.Kind != model.KindTelemetry {
				continue
			}
			if m.Device == "ghost" {
				ghostPolls++
			} else if m.Readings[0].Quality == model.Good && m.Readings[0].Value.Equal(model.Number(26000)) {
				good++
			}
		case <-deadline:
			break loop
		}
	}
	// The ghost backs off once offline: three polls at its rate (each
	// taking its 50 ms timeout), then probes 50, 100, 200, 400, 800 ms
	// apart.
	if ghostPolls > 8 {
		t.Errorf("ghost polled %d times in 1.5 s, want it backing off", ghostPolls)
	}
	if good < 20 {
		t.Errorf("healthy device read %d times in 1.5 s, want at least 20", good)
	}
	t.Logf("1.5 s on a shared bus: ghost %d polls, healthy %d good polls", ghostPolls, good)
}

// TestPortReopen: a bus whose port is missing reports its devices offline at
// once, and recovers when the port appears.
func TestPortReopen(t *testing.T) {
	dir := t.TempDir()
	tmpl := &tTemplate{Name: "th", Kind: "temp_humidity", Registers: []mb.Register{
		{Signal: "temperature", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 1},
	}}
	port := dir + "/missing"
	bus := &tBus{ID: "bus", Protocol: "modbus-rtu", Port: port, Baud: 9600, Timeout: 200 * time.Millisecond}
	r := runDriver(t, tLink{Station: station(tmpl), Bus: bus, Devices: []*tDevice{
		{ID: "th", Template: "th", Bus: "bus", UnitID: 1, Poll: 50 * time.Millisecond},
	}})
	h := r.next(t, "th", model.KindHealth, 2*time.Second).Health
	want := "open " + port + ": no such file or directory: the adapter is unplugged, or the port is named wrong (gateway ports lists those there are)"
	if h.State != model.Offline || h.Reason != want {
		t.Fatalf("health %s %q, want offline: %q", h.State, h.Reason, want)
	}
	slaveEnd, ourEnd := socatPair(t)
	startSlave(t, slaveSpec{1: everythingSpec}, "serial", slaveEnd, "9600", "N")
	// The bus's port name now appears (a link to the new pty).
	if err := symlink(ourEnd, port); err != nil {
		t.Fatal(err)
	}
	h = r.next(t, "th", model.KindHealth, 15*time.Second).Health
	if h.State != model.Online {
		t.Fatalf("health %s %q after the port appeared, want online", h.State, h.Reason)
	}
	if n := h.Counters["link_down"]; n == 0 {
		t.Errorf("counters %v: want link_down counted", h.Counters)
	}
}
