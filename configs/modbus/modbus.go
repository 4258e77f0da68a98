// Package modbus is the Modbus part of station files and device
// templates: the settings of modbus-rtu links (serial buses) and
// modbus-tcp links (TCP endpoints), of the devices on them, and the
// register maps of templates (family modbus). The gateway's driver
// (drivers/modbus) and the simulator (firmware-sim) both read them from
// here; each puts values on the wire and takes them off in its own code.
package modbus

import (
	"fmt"
	"net"
	"time"

	"outpost/configs"
)

func init() {
	configs.RegisterFamily("modbus", configs.Family{Template: func() configs.Body { return &Template{} }})
	configs.Register("modbus-rtu", configs.Protocol{Family: "modbus",
		Link: func() any { return &RTU{} }, Device: func() any { return &Device{} }, Check: checkUnits(1, 247)})
	configs.Register("modbus-tcp", configs.Protocol{Family: "modbus",
		Link: func() any { return &TCP{} }, Device: func() any { return &Device{} }, Check: checkUnits(0, 255)})
}

// RTU is a modbus-rtu link: a serial line (RS-485) carrying Modbus RTU.
type RTU struct {
	configs.Serial `yaml:",inline"`
	// Timeout is how long a device has to answer a request, 1ms to 1m,
	// beyond the frames' own time on the wire.
	Timeout time.Duration `yaml:"timeout" default:"500ms" example:"300ms"`
	// Retries are extra tries of a request that failed, 0 to 10.
	Retries int `yaml:"retries" default:"1" example:"0"`
	// Turnaround is how long devices on this bus take to answer; the
	// planner weighs it against the bytes of skipped registers.
	Turnaround time.Duration `yaml:"turnaround" default:"5ms" example:"20ms"`
}

// Line is the link's serial line.
func (r *RTU) Line() *configs.Serial { return &r.Serial }

// Check checks the link's settings.
func (r *RTU) Check(p configs.Problems) {
	r.Serial.Check(p)
	configs.CheckTiming(p, r.Timeout, r.Retries)
}

// TCP is a modbus-tcp link: a Modbus TCP endpoint, a device or a gateway
// to a serial line with unit ids.
type TCP struct {
	// Address is host:port.
	Address string `yaml:"address" required:"true" example:"192.168.10.20:502"`
	// Timeout is how long the endpoint has to answer a request, 1ms to 1m.
	Timeout time.Duration `yaml:"timeout" default:"1s" example:"500ms"`
	// Retries are extra tries of a request that failed, 0 to 10.
	Retries int `yaml:"retries" default:"1" example:"0"`
}

// Check checks the link's settings.
func (t *TCP) Check(p configs.Problems) {
	if _, port, err := net.SplitHostPort(t.Address); err != nil || port == "" {
		p.Errorf("address", "%q is not host:port (e.g. 192.168.1.20:502)", t.Address)
	}
	configs.CheckTiming(p, t.Timeout, t.Retries)
}

// Device is a Modbus device's settings.
type Device struct {
	// UnitID is the device's Modbus address: 1 to 247 on a bus, 0 to 255
	// behind an endpoint.
	UnitID int `yaml:"unit_id" required:"true" example:"1"`
	// Poll is how often the device is read, 10ms to 24h.
	Poll time.Duration `yaml:"poll" default:"1s" example:"2s"`
	// AlarmPoll is how often the signals with an event rule (a panic
	// button, a door contact) are read on their own, ahead of other
	// polls on the link, 10ms to 10s; the poll still reads them too. 0s
	// turns it off: they are read with the poll only.
	AlarmPoll time.Duration `yaml:"alarm_poll" default:"100ms" example:"50ms"`
}

// PollEvery is how often the device is read (configs.Poller).
func (d *Device) PollEvery() time.Duration { return d.Poll }

// AlarmPolled says whether the device's alarm inputs are read on their
// own (configs.AlarmPoller).
func (d *Device) AlarmPolled() bool { return d.AlarmPoll > 0 }

// Check checks the device's settings.
func (d *Device) Check(p configs.Problems) {
	if d.Poll < 10*time.Millisecond || d.Poll > 24*time.Hour {
		p.Errorf("poll", "%s is out of range (10ms to 24h)", d.Poll)
	}
	if d.AlarmPoll != 0 && (d.AlarmPoll < 10*time.Millisecond || d.AlarmPoll > 10*time.Second) {
		p.Errorf("alarm_poll", "%s is out of range (10ms to 10s, or 0s for none)", d.AlarmPoll)
	}
}

// checkUnits holds a link's unit ids to a range, each used once.
func checkUnits(lo, hi int) func(p configs.Problems, st *configs.Station, link *configs.Link) {
	return func(p configs.Problems, st *configs.Station, link *configs.Link) {
		used := map[int]string{}
		for i := range st.Devices {
			dev, path := &st.Devices[i], fmt.Sprintf("devices[%d]", i)
			d, ok := dev.Settings.(*Device)
			if dev.Link != link.ID || !ok {
				continue
			}
			if d.UnitID < lo || d.UnitID > hi {
				p.Errorf(path+".unit_id", "%d is out of range (%d to %d)", d.UnitID, lo, hi)
				continue
			}
			if first, dup := used[d.UnitID]; dup {
				p.Errorf(path+".unit_id", "unit id %d is already used on %s by %s", d.UnitID, link.ID, first)
			}
			used[d.UnitID] = fmt.Sprintf("%s (%s)", path, dev.ID)
		}
	}
}

// Template is a Modbus template's register map.
type Template struct {
	// ReadGaps says the device answers reads of unmapped addresses between
	// its mapped ones, so the planner may merge reads across gaps. Many
	// real devices answer such a read with an exception: leave it false
	// unless the device's documentation says so.
	ReadGaps bool `yaml:"read_gaps" example:"true"`
	// Registers map the device's signals.
	Registers []Register `yaml:"registers" required:"true"`
}

// Signals lists the template's signals.
func (t *Template) Signals() []configs.Signal {
	// The alarm poll reads exactly the cells of the signals with an
	// event rule; a signal within those cells (another bit of the same
	// register) comes with them.
	type cell struct {
		table Table
		addr  int
	}
	alarm := map[cell]bool{}
	for i := range t.Registers {
		if r := &t.Registers[i]; r.Event != nil {
			for a := r.Address; a < r.Address+max(r.Span(), 1); a++ {
				alarm[cell{r.Table, a}] = true
			}
		}
	}
	out := make([]configs.Signal, len(t.Registers))
	for i := range t.Registers {
		r := &t.Registers[i]
		typ := configs.Number
		switch r.Type {
		case TypeBool:
			typ = configs.Bool
		case TypeString:
			typ = configs.Text
		}
		fast := len(alarm) > 0
		for a := r.Address; a < r.Address+max(r.Span(), 1); a++ {
			fast = fast && alarm[cell{r.Table, a}]
		}
		out[i] = configs.Signal{Name: r.Signal, Path: fmt.Sprintf("registers[%d]", i), Type: typ, Unit: r.Unit, Event: r.Event, Range: r.Range, Report: r.Report,
			Writable: r.Writable, Limits: r.Limits, Fast: fast, Source: r.source(), Conversion: r.conversion()}
	}
	return out
}

// Check checks the register map: types that fit their tables, addresses
// in range and mapped once.
func (t *Template) Check(p configs.Problems) {
	if len(t.Registers) == 0 {
		p.Errorf("registers", "a template needs at least one register")
	}
	type cell struct {
		table Table
		addr  int
	}
	used := map[cell]string{}
	for i := range t.Registers {
		r, path := &t.Registers[i], fmt.Sprintf("registers[%d]", i)
		if r.Table.IsBits() && r.Type != TypeBool {
			p.Errorf(path+".type", "a %s holds single bits, so its type must be bool, not %s", r.Table, r.Type)
		}
		if r.Bit != nil && (r.Type != TypeBool || r.Table.IsBits() || *r.Bit < 0 || *r.Bit > 15) {
			p.Errorf(path+".bit", "bit selects 0 to 15 of a register for a bool on an input or holding register")
		}
		if r.Type == TypeString && (r.Length < 1 || r.Length > 125) {
			p.Errorf(path+".length", "a string needs its length in registers, 1 to 125 (got %d)", r.Length)
		}
		if r.Type != TypeString && r.Length != 0 {
			p.Errorf(path+".length", "only a string has a length")
		}
		if r.Scale == 0 {
			p.Errorf(path+".scale", "a scale of 0 would make every value 0")
		}
		switch {
		case !r.Writable:
		case r.Table != Coil && r.Table != Holding:
			p.Errorf(path+".writable", "a %s is read-only: only coils and holding registers can be written", r.Table)
		case r.Bit != nil:
			p.Errorf(path+".writable", "a bit of a register cannot be written alone (the register's other bits would be written too)")
		case r.Type == TypeString:
			p.Errorf(path+".writable", "a string cannot be written; only bools and numbers")
		}
		if l := r.Limits; l != nil {
			switch {
			case !r.Writable || r.Type == TypeBool || r.Type == TypeString:
				p.Errorf(path+".limits", "only a writable number has limits")
			case l.Min > l.Max:
				p.Errorf(path+".limits", "min %v is above max %v", l.Min, l.Max)
			}
		}
		if span := r.Span(); r.Address < 0 || r.Address+span-1 > 65535 {
			p.Errorf(path+".address", "registers %d to %d are beyond the Modbus address range 0 to 65535", r.Address, r.Address+span-1)
		} else if r.Bit == nil {
			for a := r.Address; a < r.Address+span; a++ {
				c := cell{r.Table, a}
				if first, dup := used[c]; dup {
					p.Errorf(path+".address", "%s %d is already mapped by %s", r.Table, a, first)
					break
				}
				used[c] = path
			}
		}
	}
}

// Table is a Modbus table.
type Table string

const (
	Coil     Table = "coil"
	Discrete Table = "discrete"
	Input    Table = "input"
	Holding  Table = "holding"
)

// Values lists the tables a template may name.
func (Table) Values() []string { return []string{"coil", "discrete", "input", "holding"} }

// IsBits reports whether the table holds bits (coils, discrete inputs).
func (t Table) IsBits() bool { return t == Coil || t == Discrete }

// DataType of a register value.
type DataType string

const (
	TypeBool    DataType = "bool"
	TypeInt16   DataType = "int16"
	TypeUint16  DataType = "uint16"
	TypeInt32   DataType = "int32"
	TypeUint32  DataType = "uint32"
	TypeFloat32 DataType = "float32"
	TypeFloat64 DataType = "float64"
	TypeString  DataType = "string"
)

// Values lists the data types a template may name.
func (DataType) Values() []string {
	return []string{"bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "string"}
}

// ByteOrder of a multi-byte value, as letters of its big-endian bytes: ABCD is
// big-endian, CDAB swaps 16-bit words, BADC swaps bytes within words, DCBA is
// little-endian. For 16- and 64-bit values the same two swaps apply.
type ByteOrder string

const (
	ABCD ByteOrder = "ABCD"
	CDAB ByteOrder = "CDAB"
	BADC ByteOrder = "BADC"
	DCBA ByteOrder = "DCBA"
)

// Values lists the byte orders a template may name.
func (ByteOrder) Values() []string { return []string{"ABCD", "CDAB", "BADC", "DCBA"} }

// SwapWords reports whether the order reverses the order of 16-bit words.
func (o ByteOrder) SwapWords() bool { return o == CDAB || o == DCBA }

// SwapBytes reports whether the order swaps the two bytes of each word.
func (o ByteOrder) SwapBytes() bool { return o == BADC || o == DCBA }

// Register maps one signal onto the device's tables.
type Register struct {
	// Signal is the signal's name at the hub: lower-case letters, digits,
	// '_'; not seq, historical or ending in _quality.
	Signal string `yaml:"signal" required:"true" example:"temperature"`
	// Table is the Modbus table: coils and discrete inputs hold bits,
	// input and holding registers 16-bit words.
	Table Table `yaml:"table" required:"true" example:"input"`
	// Address is the 0-based protocol address of the first register or
	// bit (see Addresses below).
	Address int `yaml:"address" required:"true" example:"0x2000"`
	// Type of the value; a bit table holds bool only.
	Type DataType `yaml:"type" required:"true" example:"float32"`
	// Order of the value's bytes (see Byte orders below).
	Order ByteOrder `yaml:"order" default:"ABCD" example:"CDAB"`
	// Length of a string in registers, 1 to 125 (two characters each).
	Length int `yaml:"length" example:"8"`
	// Bit selects one bit (0 to 15) of a register for a bool on an input
	// or holding register; without it a bool is the register != 0.
	Bit *int `yaml:"bit" example:"3"`
	// Scale multiplies the raw value (in decimal: 234 at 0.1 is 23.4).
	Scale float64 `yaml:"scale" default:"1" example:"0.1"`
	// Offset is added after the scale.
	Offset float64 `yaml:"offset" example:"-40"`
	// Unit of the value after scale and offset, as the hub shows it.
	Unit string `yaml:"unit" example:"°C"`
	// Range is the device's measuring range from its datasheet, after
	// scale and offset: a value outside it is published with quality
	// uncertain, as a sign of a wrong template or a failing sensor.
	Range *configs.Range `yaml:"range"`
	// Event, on a bool signal, raises an event when it becomes true. Such
	// a signal is also read at the device's alarm_poll interval.
	Event *configs.EventRule `yaml:"event"`
	// Report sends the signal by exception: when it moved by more than
	// its deadband, or after max_silence (unless the station turns
	// report_by_exception off); without it every reading is sent.
	Report *configs.Report `yaml:"report"`
	// Writable lets commands from the hub set the signal: a coil, or a
	// holding register holding a bool or a number (not a bit of one).
	Writable bool `yaml:"writable" example:"true"`
	// Limits bound the values a command may write, after scale and
	// offset; a value outside them is refused before anything is sent.
	Limits *configs.Range `yaml:"limits"`
	// Sim tells the simulator how to make this signal's values; the
	// gateway ignores it.
	Sim *configs.Sim `yaml:"sim"`
}

// Words is how many 16-bit registers a value of this type takes, or 0 for a
// bit.
func (r *Register) Words() int {
	switch r.Type {
	case TypeBool:
		if r.Table.IsBits() {
			return 0
		}
		return 1
	case TypeInt16, TypeUint16:
		return 1
	case TypeInt32, TypeUint32, TypeFloat32:
		return 2
	case TypeFloat64:
		return 4
	case TypeString:
		return r.Length
	}
	return 0
}

// source is where the register's value is read: "input register 1",
// "holding register 8 bit 3", "coil 0".
func (r *Register) source() string {
	switch {
	case r.Table.IsBits():
		return fmt.Sprintf("%s %d", r.Table, r.Address)
	case r.Bit != nil:
		return fmt.Sprintf("%s register %d bit %d", r.Table, r.Address, *r.Bit)
	}
	return fmt.Sprintf("%s register %d", r.Table, r.Address)
}

// conversion is how the raw value becomes the signal's: "int16 × 0.1",
// "float32 CDAB", "uint16 × 0.1 - 40".
func (r *Register) conversion() string {
	s := string(r.Type)
	if r.Order != ABCD {
		s += " " + string(r.Order)
	}
	if r.Scale != 1 {
		s += fmt.Sprintf(" × %g", r.Scale)
	}
	switch {
	case r.Offset > 0:
		s += fmt.Sprintf(" + %g", r.Offset)
	case r.Offset < 0:
		s += fmt.Sprintf(" - %g", -r.Offset)
	}
	return s
}

// Span is how many table entries (bits or registers) the register covers.
func (r *Register) Span() int {
	if r.Table.IsBits() {
		return 1
	}
	return r.Words()
}
