package modbus

import (
	"time"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/drivers"
)

// The tests describe links, devices and templates in a flat shape; these
// turn them into the station file's (a link or device whose protocol owns
// its settings, a template whose body is a register map).

type tBus struct {
	ID, Protocol, Port string
	Baud               int
	Parity             configs.Parity
	DataBits, StopBits int
	Timeout            time.Duration
	Retries            int
	Turnaround         time.Duration
}

func (b *tBus) settings() *mb.RTU {
	return &mb.RTU{Serial: configs.Serial{Port: b.Port, Baud: b.Baud, Parity: b.Parity, DataBits: b.DataBits, StopBits: b.StopBits},
		Timeout: b.Timeout, Retries: b.Retries, Turnaround: b.Turnaround}
}

type tEndpoint struct {
	ID, Protocol, Address string
	Timeout               time.Duration
	Retries               int
}

type tDevice struct {
	ID, Template, Bus, Endpoint string
	UnitID                      int
	Poll                        time.Duration
}

type tTemplate struct {
	Name, Kind string
	ReadGaps   bool
	Registers  []mb.Register
}

func (t *tTemplate) config() *configs.Template {
	return &configs.Template{Name: t.Name, Kind: t.Kind, Protocol: "modbus", Body: t.body()}
}

func (t *tTemplate) body() *mb.Template {
	return &mb.Template{ReadGaps: t.ReadGaps, Registers: t.Registers}
}

type tLink struct {
	Station  *configs.Station
	Bus      *tBus
	Endpoint *tEndpoint
	Devices  []*tDevice
}

// link is the driver's link: the station's, with its devices.
func (l tLink) link() drivers.Link {
	cfg := &configs.Link{}
	switch {
	case l.Bus != nil:
		cfg.ID, cfg.Protocol, cfg.Settings = l.Bus.ID, "modbus-rtu", l.Bus.settings()
	case l.Endpoint != nil:
		cfg.ID, cfg.Protocol = l.Endpoint.ID, "modbus-tcp"
		cfg.Settings = &mb.TCP{Address: l.Endpoint.Address, Timeout: l.Endpoint.Timeout, Retries: l.Endpoint.Retries}
	}
	out := drivers.Link{Station: l.Station, Config: cfg}
	for _, d := range l.Devices {
		out.Devices = append(out.Devices, &configs.Device{ID: d.ID, Template: d.Template, Link: cfg.ID,
			Settings: &mb.Device{UnitID: d.UnitID, Poll: d.Poll}})
	}
	return out
}

// station holds templates by name.
func station(tmpls ...*tTemplate) *configs.Station {
	s := &configs.Station{Templates: map[string]*configs.Template{}}
	for _, t := range tmpls {
		s.Templates[t.Name] = t.config()
	}
	return s
}
