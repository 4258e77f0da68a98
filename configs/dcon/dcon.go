// Package dcon is the DCON part of station files and device templates: the
// settings of dcon links (an RS-485 bus of ASCII I/O modules: Advantech
// ADAM-4000, ICP DAS I-7000/M-7000 and their clones), of the modules on
// them, and the template format of the modules (family dcon): the module
// name $AAM answers, the layout of the $AA6 answer, and the module's input
// and output channels as signals. The gateway's driver (drivers/dcon) and
// the simulator (firmware-sim/dcon) both read them from here; each speaks
// the protocol with its own code.
package dcon

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"outpost/configs"
)

func init() {
	configs.RegisterFamily("dcon", configs.Family{Template: func() configs.Body { return &Template{} }})
	configs.Register("dcon", configs.Protocol{Family: "dcon",
		Link: func() any { return &Link{} }, Device: func() any { return &Device{} }, Check: checkModules})
}

// Link is a dcon link: a serial line (RS-485) of DCON modules.
type Link struct {
	configs.Serial `yaml:",inline"`
	// Timeout is how long a module has to answer a command, 1ms to 1m,
	// beyond the frames' own time on the wire. Modules answer within a
	// few milliseconds.
	Timeout time.Duration `yaml:"timeout" default:"200ms" example:"100ms"`
	// Retries are extra tries of a read that failed, 0 to 10. A write is
	// never sent twice: see the driver's documentation.
	Retries int `yaml:"retries" default:"1" example:"2"`
}

// Line is the link's serial line.
func (l *Link) Line() *configs.Serial { return &l.Serial }

// Check checks the link's settings.
func (l *Link) Check(p configs.Problems) {
	l.Serial.Check(p)
	configs.CheckTiming(p, l.Timeout, l.Retries)
}

// Device is a DCON module's settings. Address, baud rate and checksum are
// set on the module itself (with the vendor's utility, or the INIT switch
// and the %AANNTTCCFF command); the station file must say the same.
type Device struct {
	// Address is the module's address, 0 to 255; the manuals write it as
	// two hex digits ("01", "1A"): write it with 0x (0x01, 0x1A).
	Address int `yaml:"address" required:"true" example:"0x01"`
	// Checksum says the module has its checksum on: every command and
	// answer then ends in two hex digits, the sum of its characters.
	Checksum bool `yaml:"checksum" example:"true"`
	// Poll is how often every channel is read, 10ms to 24h.
	Poll time.Duration `yaml:"poll" default:"1s" example:"500ms"`
	// AlarmPoll is how often the module is read, ahead of other polls on
	// the link, when its template has inputs with an event rule (a panic
	// button, a door contact), 10ms to 10s.
	AlarmPoll time.Duration `yaml:"alarm_poll" default:"100ms" example:"50ms"`
}

// PollEvery is how often the module is read (configs.Poller).
func (d *Device) PollEvery() time.Duration { return d.Poll }

// Check checks the module's settings.
func (d *Device) Check(p configs.Problems) {
	if d.Poll < 10*time.Millisecond || d.Poll > 24*time.Hour {
		p.Errorf("poll", "%s is out of range (10ms to 24h)", d.Poll)
	}
	if d.AlarmPoll < 10*time.Millisecond || d.AlarmPoll > 10*time.Second {
		p.Errorf("alarm_poll", "%s is out of range (10ms to 10s)", d.AlarmPoll)
	}
}

// checkModules holds a link's module addresses to 0..255, each used once,
// and a module whose latch is read to its checksum.
func checkModules(p configs.Problems, st *configs.Station, link *configs.Link) {
	used := map[int]string{}
	for i := range st.Devices {
		dev, path := &st.Devices[i], fmt.Sprintf("devices[%d]", i)
		d, ok := dev.Settings.(*Device)
		if dev.Link != link.ID || !ok {
			continue
		}
		if t, ok := st.Templates[dev.Template]; ok && !d.Checksum {
			if body, ok := t.Body.(*Template); ok && body.Latch {
				p.Errorf(path+".checksum", "template %s reads the module's latched inputs, which needs the checksum on (checksum: true here and on the module): without it a damaged latch answer raises an alarm that never was", t.Name)
			}
		}
		if d.Address < 0 || d.Address > 0xFF {
			p.Errorf(path+".address", "%d is out of range (0 to 255, 0x00 to 0xFF)", d.Address)
			continue
		}
		if first, dup := used[d.Address]; dup {
			p.Errorf(path+".address", "address 0x%02X is already used on %s by %s", d.Address, link.ID, first)
		}
		used[d.Address] = fmt.Sprintf("%s (%s)", path, dev.ID)
	}
}

// Template is a DCON module: its name, the layout of its $AA6 answer, and
// its channels.
type Template struct {
	// Module is the name the module gives in answer to $AAM ("4050",
	// "7060D"): the driver checks it, so that a module of another model
	// at the address is reported, not read with the wrong layout.
	Module string `yaml:"module" required:"true" example:"4050"`
	// Answer is the layout of the data in the module's answer to $AA6,
	// the six hex digits after "!", by pairs as the manual prints them:
	// OO outputs 0-7, PP outputs 8-15, II inputs 0-7, JJ inputs 8-15, 00
	// always zero. The ADAM-4050 answers !(dataOutput)(dataInput)00:
	// OOII00.
	Answer string `yaml:"answer" required:"true" example:"OOII00"`
	// DIChannels is how many digital inputs the module has, 0 to 16.
	DIChannels int `yaml:"di_channels" example:"7"`
	// DOChannels is how many digital outputs the module has, 0 to 16.
	DOChannels int `yaml:"do_channels" example:"8"`
	// Inputs map input channels to signals.
	Inputs []Input `yaml:"inputs"`
	// Outputs map output channels to signals; commands from the hub may
	// set them.
	Outputs []Output `yaml:"outputs"`
	// Latch says the module keeps a latch of its inputs: $AAL1 answers
	// which inputs were high at some moment since $AAC last cleared it,
	// $AAL0 which were low, in the layout of $AA6 (ICP DAS, I-7000 DIO
	// Manual, sections 2.11 and 2.13; the ADAM-4050 has no latch). The
	// driver then reads the latch at every alarm poll, so that a press
	// shorter than the time between two reads still reaches the hub. It
	// needs the module's checksum on: a damaged latch answer would raise
	// an alarm that never was.
	Latch bool `yaml:"latch" example:"true"`
}

// Input maps one digital input channel to a bool signal.
type Input struct {
	// Signal is the signal's name at the hub: lower-case letters, digits,
	// '_'.
	Signal string `yaml:"signal" required:"true" example:"panic"`
	// Channel is the input's channel number as printed on the module
	// (DI0 is 0).
	Channel int `yaml:"channel" required:"true" example:"0"`
	// Invert makes the signal true when the input reads 0: a normally
	// closed contact (a door contact, a tamper loop) that opens on alarm.
	Invert bool `yaml:"invert" example:"true"`
	// Event raises an event when the signal becomes true. Inputs with an
	// event rule are read at the module's alarm_poll interval.
	Event *configs.EventRule `yaml:"event"`
	// Report sends the signal by exception: when it moved by more than
	// its deadband, or after max_silence (unless the station turns
	// report_by_exception off); without it every reading is sent.
	Report *configs.Report `yaml:"report"`
}

// On says whether the input's signal is true when the module's inputs
// read in, a bit per channel.
func (i *Input) On(in uint16) bool { return in>>i.Channel&1 == 1 != i.Invert }

// Output maps one digital output channel (a relay, an open collector) to
// a writable bool signal; its state is read back from the module.
type Output struct {
	// Signal is the signal's name at the hub.
	Signal string `yaml:"signal" required:"true" example:"siren"`
	// Channel is the output's channel number as printed on the module
	// (DO0 is 0).
	Channel int `yaml:"channel" required:"true" example:"1"`
}

// Signals lists the template's signals: the inputs, then the outputs
// (writable).
func (t *Template) Signals() []configs.Signal {
	// One $AA6 answer carries every input and output: when an input has
	// an event rule, the alarm poll reads them all.
	fast := slices.ContainsFunc(t.Inputs, func(in Input) bool { return in.Event != nil })
	var out []configs.Signal
	for i, in := range t.Inputs {
		out = append(out, configs.Signal{Name: in.Signal, Path: fmt.Sprintf("inputs[%d]", i), Type: configs.Bool, Event: in.Event, Report: in.Report, Fast: fast})
	}
	for i, o := range t.Outputs {
		out = append(out, configs.Signal{Name: o.Signal, Path: fmt.Sprintf("outputs[%d]", i), Type: configs.Bool, Writable: true, Fast: fast})
	}
	return out
}

var (
	modulePattern = regexp.MustCompile(`^[0-9A-Z][0-9A-Z+-]{0,15}$`)
	answerPattern = regexp.MustCompile(`^(OO|PP|II|JJ|00){3}$`)
)

// Bytes says which byte of the $AA6 answer's data holds each group of 8
// channels: inputs 0-7 and 8-15, outputs 0-7 and 8-15; -1 where the
// module has none. The answer must be valid (Check).
func (t *Template) Bytes() (in, out [2]int) {
	in, out = [2]int{-1, -1}, [2]int{-1, -1}
	for i := 0; i+1 < len(t.Answer); i += 2 {
		switch t.Answer[i : i+2] {
		case "II":
			in[0] = i / 2
		case "JJ":
			in[1] = i / 2
		case "OO":
			out[0] = i / 2
		case "PP":
			out[1] = i / 2
		}
	}
	return in, out
}

// Check checks the module's layout and channels.
func (t *Template) Check(p configs.Problems) {
	if !modulePattern.MatchString(t.Module) {
		p.Errorf("module", "%q is not a module name as $AAM answers it (capital letters, digits, '+', '-'; e.g. 4050, 7060D)", t.Module)
	}
	valid := answerPattern.MatchString(t.Answer)
	for _, pair := range []string{"OO", "PP", "II", "JJ"} {
		if strings.Count(t.Answer, pair) > 1 {
			valid = false
		}
	}
	if valid && (strings.Contains(t.Answer, "JJ") && !strings.Contains(t.Answer, "II") ||
		strings.Contains(t.Answer, "PP") && !strings.Contains(t.Answer, "OO")) {
		valid = false
	}
	if !valid {
		p.Errorf("answer", "%q is not a $AA6 layout: six characters, by pairs OO (outputs 0-7), PP (outputs 8-15), II (inputs 0-7), JJ (inputs 8-15) or 00, each once; e.g. OOII00 for an ADAM-4050", t.Answer)
	}
	in, out := t.Bytes()
	maxIn, maxOut := groups(in), groups(out)
	if t.DIChannels < 0 || t.DIChannels > 16 {
		p.Errorf("di_channels", "%d is out of range (0 to 16)", t.DIChannels)
	} else if valid && t.DIChannels > maxIn {
		p.Errorf("di_channels", "%d inputs do not fit the answer %s, which carries %d", t.DIChannels, t.Answer, maxIn)
	}
	if t.DOChannels < 0 || t.DOChannels > 16 {
		p.Errorf("do_channels", "%d is out of range (0 to 16)", t.DOChannels)
	} else if valid && t.DOChannels > maxOut {
		p.Errorf("do_channels", "%d outputs do not fit the answer %s, which carries %d", t.DOChannels, t.Answer, maxOut)
	}
	if len(t.Inputs)+len(t.Outputs) == 0 {
		p.Errorf("inputs", "a template needs at least one input or output")
	}
	dis := make([]int, len(t.Inputs))
	for i := range t.Inputs {
		dis[i] = t.Inputs[i].Channel
	}
	dos := make([]int, len(t.Outputs))
	for i := range t.Outputs {
		dos[i] = t.Outputs[i].Channel
	}
	checkChannels(p, "input", "di_channels", dis, t.DIChannels)
	checkChannels(p, "output", "do_channels", dos, t.DOChannels)
}

// groups is how many channels the bytes of one direction carry.
func groups(b [2]int) int {
	n := 0
	for _, i := range b {
		if i >= 0 {
			n += 8
		}
	}
	return n
}

// checkChannels holds the channels of a template's inputs or outputs
// (kind) to the module's n (the template's key count), each mapped once.
func checkChannels(p configs.Problems, kind, count string, channels []int, n int) {
	seen := map[int]string{}
	for i, ch := range channels {
		path := fmt.Sprintf("%ss[%d]", kind, i)
		switch first, dup := seen[ch]; {
		case (ch < 0 || ch >= n) && n >= 0 && n <= 16:
			p.Errorf(path+".channel", "the module has no %s %d (%s is %d: 0 to %d)", kind, ch, count, n, n-1)
		case dup:
			p.Errorf(path+".channel", "%s %d is already mapped by %s", kind, ch, first)
		}
		seen[ch] = path
	}
}
