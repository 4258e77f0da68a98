// Package sim is what the simulated firmware of every protocol shares: the
// registry of link simulators by protocol, the options they get, and the
// counters and served-readings log they report to. A protocol's simulator
// package registers itself in init(); firmware-sim imports it.
package sim

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/vport"
)

// Link is the simulated other side of one link of a station: the devices
// on a serial line, behind an endpoint, or reporting to a listener.
type Link interface {
	// Serve runs the link until ctx ends; it returns nil then.
	Serve(ctx context.Context) error
	// Close releases what the link holds (ports, listeners); it is called
	// once, after Serve returned or when the station could not start.
	Close() error
	// Devices are the link's simulated devices.
	Devices() []Device
}

// Device is one simulated device.
type Device interface {
	ID() string
	Stats() Stats
}

// Actor is a simulated device that acts on request: a button pressed, a
// panel's alarm or its periodic tests stopped. firmware-sim's control
// server (-control) calls it for the testbench.
type Actor interface {
	// Actions lists what the device can be asked to do, with their
	// arguments, for the control server's errors ("press", "alarm
	// code=120 zone=5", ...).
	Actions() []string
	// Act does one of them. It returns when the device has done it (a
	// frame sent, an input changed); an unknown action or a bad argument
	// is an error that names what was expected.
	Act(ctx context.Context, action string, args map[string]string) error
}

// Stats are a device's counters.
type Stats struct {
	// Polls counts requests answered, normally or with an exception.
	Polls int64 `json:"polls"`
	// ReadingsServed counts signals whose whole value the device sent in
	// a response that went out in full, but for fast signals
	// (configs.Signal.Fast): the gateway reads those at the device's
	// alarm_poll too and publishes what changed; the changes of alarm
	// inputs count in EventsServed.
	ReadingsServed int64 `json:"readings_served"`
	// Exceptions counts exception responses.
	Exceptions int64 `json:"exceptions"`
	// CRCErrors counts damaged frames that seemed addressed to the device.
	CRCErrors int64 `json:"crc_errors"`
	// EventsServed counts the edges of signals with an event rule that a
	// master reading every response saw, or the events a device reported
	// itself: the gateway must raise exactly that many events.
	EventsServed int64 `json:"events_served"`
	// Writes counts the writes the device carried out, by signal: each
	// command from the hub must act exactly once.
	Writes map[string]int64 `json:"writes,omitempty"`
}

// Raised is an alarm a simulated device raised, for the testbench to find
// at the hub: the k-th alarm of a device and kind is the k-th event of
// that device and kind there.
type Raised struct {
	Device string `json:"device"`
	// Kind is the event kind the gateway must report (panic, burglary,
	// ...), and State "active" or "cleared".
	Kind  string `json:"kind"`
	State string `json:"state"`
	// At is when the alarm was on its way: the end of a frame on the
	// wire, or the moment an input changed.
	At time.Time `json:"at"`
	// Source says how it travels ("dc09", "dcon", ...), for reports.
	Source string `json:"source"`
}

// Reading is one signal served whole, with the value a correct master
// decodes from it.
type Reading struct {
	Signal string
	Value  signal.Value
}

// Sink receives what devices served, and the alarms they raised. It must
// be safe for concurrent use.
type Sink interface {
	Served(device string, rs []Reading)
	Raised(r Raised)
}

// Recorder is a Sink that keeps the alarms raised, for tests.
type Recorder struct {
	mu     sync.Mutex
	raised []Raised
}

func (r *Recorder) Served(string, []Reading) {}

func (r *Recorder) Raised(a Raised) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.raised = append(r.raised, a)
}

// All returns the alarms raised so far, in order.
func (r *Recorder) All() []Raised {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Raised(nil), r.raised...)
}

// Options are what every link simulator gets.
type Options struct {
	// Seed makes the simulated values repeatable.
	Seed int64
	// Start is when the signals start.
	Start time.Time
	// Sink, if set, receives every served reading.
	Sink Sink
	// Deaf, while true, makes every device ignore what reaches it.
	Deaf *atomic.Bool
	// Faults are what the devices do wrong (silent, flaky); the control
	// API changes them at will.
	Faults *Faults
	// Turnaround, when not negative, replaces the links' own device
	// turnaround.
	Turnaround time.Duration
	// CheckLine makes serial devices answer garbage to a master whose line
	// settings differ from the link's.
	CheckLine bool
	// Noise is the share of bytes (0 to 1) corrupted on serial lines, in
	// both directions, as electrical noise would.
	Noise float64
	// OtherMaster, when set, puts another master on every Modbus RTU bus,
	// polling at this interval (see slave.RTU.OtherMaster).
	OtherMaster time.Duration
	// Echo names the serial links whose master hears its own requests
	// back (an RS-485 adapter without echo suppression).
	Echo map[string]bool
	Log  *slog.Logger
}

// OpenPort opens the virtual serial port of a link at path, with the
// line's noise and the master's echo the options give it.
func (o Options) OpenPort(link *configs.Link, path string) (*vport.Port, error) {
	p, err := vport.Open(path)
	if err != nil {
		return nil, err
	}
	if o.Noise > 0 {
		p.SetNoise(vport.NewNoise(o.Noise, o.Seed, link.ID))
	}
	p.SetEcho(o.Echo[link.ID])
	return p, nil
}

// Factory builds the simulator of one link of a station, with the
// station's devices on it. It may open ports and listeners.
type Factory func(st *configs.Station, link *configs.Link, devices []*configs.Device, o Options) (Link, error)

var (
	mu        sync.RWMutex
	factories = map[string]Factory{}
)

// Register makes a protocol's simulator known. It panics on a protocol
// registered twice.
func Register(protocol string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := factories[protocol]; dup {
		panic("sim: protocol registered twice: " + protocol)
	}
	factories[protocol] = f
}

// New builds the simulator of a link.
func New(st *configs.Station, link *configs.Link, o Options) (Link, error) {
	mu.RLock()
	f, ok := factories[link.Protocol]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("link %s: no simulator of protocol %q (have %v)", link.ID, link.Protocol, slices.Sorted(maps.Keys(factories)))
	}
	return f(st, link, st.DevicesOn(link.ID), o)
}

// Start runs the simulator of a link in the background, for tests: stop
// ends it, waits for it, releases what it holds, and returns the error
// it ended with.
func Start(st *configs.Station, link *configs.Link, o Options) (l Link, stop func() error, err error) {
	if l, err = New(st, link, o); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	return l, func() error {
		cancel()
		err := <-done
		l.Close()
		return err
	}, nil
}

// Faults are what the devices do wrong now: some answer nothing (switched
// off, at a wrong unit id), some lose or damage a share of their answers
// (a failing transceiver, a bad contact). The control API sets them at
// will. It is safe for concurrent use; nil is a station without faults.
type Faults struct {
	mu     sync.Mutex
	silent map[string]bool
	flaky  map[string]float64
	slow   map[string]time.Duration
}

// NewFaults is a station whose named devices are silent.
func NewFaults(silent ...string) *Faults {
	f := &Faults{silent: map[string]bool{}, flaky: map[string]float64{}, slow: map[string]time.Duration{}}
	for _, id := range silent {
		f.silent[id] = true
	}
	return f
}

// SetSilent silences a device, or lets it answer again.
func (f *Faults) SetSilent(id string, silent bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.silent[id] = silent
}

// Silent says whether a device answers nothing.
func (f *Faults) Silent(id string) bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.silent[id]
}

// SetFlaky makes a device lose or damage share (0 to 1) of its answers.
func (f *Faults) SetFlaky(id string, share float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flaky[id] = share
}

// SetSlow makes a polled device answer late by d (0: on time), as a
// busy or failing one does.
func (f *Faults) SetSlow(id string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.slow[id] = d
}

// Slow is how late a device answers.
func (f *Faults) Slow(id string) time.Duration {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slow[id]
}

// Flaky is the share of its answers a device loses or damages.
func (f *Faults) Flaky(id string) float64 {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flaky[id]
}
