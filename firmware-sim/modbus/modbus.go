// Package modbus simulates the Modbus links of a station: the devices of a
// modbus-rtu link answer on a virtual serial port linked at the link's
// port path, paced to its baud rate; those of a modbus-tcp link listen at
// its address. It registers both with the simulator.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/firmware-sim/device"
	"outpost/firmware-sim/sim"
	"outpost/firmware-sim/slave"
	"outpost/firmware-sim/vport"
)

func init() {
	sim.Register("modbus-rtu", newRTU)
	sim.Register("modbus-tcp", newTCP)
}

// devices builds the simulated devices of a link, by unit id, and says
// what each unit does wrong now (sim.Options.Faults).
func devices(st *configs.Station, devs []*configs.Device, o sim.Options) (all []*device.Device, units map[byte]slave.Unit, faults slave.Faults, err error) {
	units = map[byte]slave.Unit{}
	ids := map[byte]string{}
	for _, d := range devs {
		dev, err := device.New(*d, st.Templates[d.Template], device.Options{Seed: o.Seed, Start: o.Start, Sink: o.Sink})
		if err != nil {
			return nil, nil, faults, err
		}
		all = append(all, dev)
		units[dev.Unit()], ids[dev.Unit()] = dev, d.ID
		if o.Faults.Silent(d.ID) {
			o.Log.Info("device silent", "device", d.ID, "unit", dev.Unit())
		}
	}
	return all, units, slave.Faults{
		Silent: func(u byte) bool { return o.Faults.Silent(ids[u]) },
		Flaky:  func(u byte) float64 { return o.Faults.Flaky(ids[u]) },
		Slow:   func(u byte) time.Duration { return o.Faults.Slow(ids[u]) },
	}, nil
}

// rtuLink is a simulated RS-485 bus.
type rtuLink struct {
	srv  *slave.RTU
	port *vport.Port
	devs []*device.Device
}

func newRTU(st *configs.Station, link *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	bus, ok := link.Settings.(*mb.RTU)
	if !ok {
		return nil, fmt.Errorf("link %s: not a modbus-rtu link", link.ID)
	}
	all, units, faults, err := devices(st, devs, o)
	if err != nil {
		return nil, err
	}
	p, err := o.OpenPort(link, bus.Port)
	if err != nil {
		return nil, fmt.Errorf("bus %s: %w", link.ID, err)
	}
	turn := bus.Turnaround
	if o.Turnaround >= 0 {
		turn = o.Turnaround
	}
	var port slave.Port = p
	if !o.CheckLine {
		port = plainPort{p}
	}
	l := &rtuLink{port: p, devs: all, srv: &slave.RTU{
		Port:        port,
		Line:        slave.LineOf(*bus),
		Turnaround:  turn,
		Units:       units,
		Faults:      faults,
		Log:         o.Log.With("bus", link.ID),
		Deaf:        o.Deaf,
		OtherMaster: o.OtherMaster,
	}}
	o.Log.Info("bus up", "bus", link.ID, "port", bus.Port, "pty", p.Path(), "baud", bus.Baud, "devices", len(units), "noise", o.Noise)
	return l, nil
}

// plainPort hides a port's line sensing.
type plainPort struct{ slave.Port }

func (l *rtuLink) Serve(ctx context.Context) error { return l.srv.Serve(ctx) }
func (l *rtuLink) Close() error {
	closeDevices(l.devs)
	return l.port.Close()
}

// Stats are what the line saw: frames, damaged frames, and the bytes the
// noise damaged.
func (l *rtuLink) Stats() any {
	return struct {
		slave.BusStats
		NoiseBytes int64 `json:"noise_bytes"`
	}{l.srv.Stats(), l.port.Noise().Corrupted()}
}
func (l *rtuLink) Devices() []sim.Device { return simDevices(l.devs) }

// tcpLink is a simulated Modbus TCP endpoint.
type tcpLink struct {
	srv  *slave.TCP
	ln   net.Listener
	devs []*device.Device
}

func newTCP(st *configs.Station, link *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	ep, ok := link.Settings.(*mb.TCP)
	if !ok {
		return nil, fmt.Errorf("link %s: not a modbus-tcp link", link.ID)
	}
	all, units, faults, err := devices(st, devs, o)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", ep.Address)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", link.ID, err)
	}
	o.Log.Info("endpoint up", "endpoint", link.ID, "address", ln.Addr().String(), "devices", len(units))
	return &tcpLink{ln: ln, devs: all, srv: &slave.TCP{Units: units, Faults: faults, Log: o.Log.With("endpoint", link.ID), Deaf: o.Deaf}}, nil
}

func (l *tcpLink) Serve(ctx context.Context) error { return l.srv.Serve(ctx, l.ln) }

// Addr is where the endpoint listens (for a station file's address with
// port 0).
func (l *tcpLink) Addr() net.Addr { return l.ln.Addr() }

func (l *tcpLink) Close() error {
	closeDevices(l.devs)
	if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (l *tcpLink) Devices() []sim.Device { return simDevices(l.devs) }

// closeDevices stops what the devices' actions left pending.
func closeDevices(devs []*device.Device) {
	for _, d := range devs {
		d.Close()
	}
}

func simDevices(devs []*device.Device) []sim.Device {
	out := make([]sim.Device, len(devs))
	for i, d := range devs {
		out[i] = d
	}
	return out
}
