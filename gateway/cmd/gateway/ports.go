package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"go.bug.st/serial/enumerator"
)

// byIDDir is where udev names each USB serial adapter after its vendor,
// model and serial number: a name that stays the same whatever order the
// adapters were plugged in, unlike /dev/ttyUSB0.
const byIDDir = "/dev/serial/by-id"

// port is a serial port as `gateway ports` shows it.
type port struct {
	Device       string `json:"device"`          // /dev/ttyUSB0
	ByID         string `json:"by_id,omitempty"` // the stable path, for the station file
	USB          bool   `json:"usb"`
	VID          string `json:"vid,omitempty"`
	PID          string `json:"pid,omitempty"`
	SerialNumber string `json:"serial_number,omitempty"`
	Product      string `json:"product,omitempty"`
}

// Use is the path a station file should name.
func (p port) Use() string {
	if p.ByID != "" {
		return p.ByID
	}
	return p.Device
}

func cmdPorts(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	asJSON := fs.Bool("json", false, "print the ports as JSON")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	found, err := enumerator.GetDetailedPortsList()
	if err != nil {
		fmt.Fprintf(stderr, "gateway ports: cannot list the serial ports: %v\n", err)
		return 1
	}
	ports := listPorts(found, byID(byIDDir))
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if ports == nil {
			ports = []port{}
		}
		if err := enc.Encode(ports); err != nil {
			return 1
		}
		return 0
	}
	printPorts(stdout, ports)
	return 0
}

// listPorts joins what the system reports of each port with its stable
// name, USB adapters first, then by device name.
func listPorts(found []*enumerator.PortDetails, byID map[string]string) []port {
	var out []port
	for _, d := range found {
		p := port{Device: d.Name, ByID: byID[d.Name], USB: d.IsUSB}
		if d.IsUSB {
			p.VID, p.PID, p.SerialNumber, p.Product = strings.ToLower(d.VID), strings.ToLower(d.PID), d.SerialNumber, d.Product
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b port) int {
		if a.USB != b.USB {
			if a.USB {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Device, b.Device)
	})
	return out
}

// byID maps each device (/dev/ttyUSB0) to its link in dir, if it has one.
func byID(dir string) map[string]string {
	m := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return m // no USB serial adapter, or no udev
	}
	for _, e := range entries {
		link := filepath.Join(dir, e.Name())
		target, err := filepath.EvalSymlinks(link)
		if err != nil {
			continue
		}
		m[target] = link
	}
	return m
}

func printPorts(w io.Writer, ports []port) {
	if len(ports) == 0 {
		fmt.Fprintln(w, "No serial ports found. Plug in the USB to RS-485 adapter and run\n"+
			"gateway ports again; if it still does not show, `dmesg | tail` says\n"+
			"whether the system saw it.")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tUSB ID\tSERIAL\tPRODUCT")
	for _, p := range ports {
		id, serial, product := "-", "-", "-"
		if p.USB {
			id = p.VID + ":" + p.PID
			serial, product = orDash(p.SerialNumber), orDash(p.Product)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Device, id, serial, product)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nIn the station file (links[].port), name each port by the path below:")
	fmt.Fprintln(w, "it stays the same after a reboot, whatever order adapters are plugged in.")
	for _, p := range ports {
		fmt.Fprintf(w, "  %s: %s\n", p.Device, p.Use())
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
