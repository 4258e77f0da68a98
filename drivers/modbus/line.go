package modbus

import (
	"fmt"

	mb "outpost/configs/modbus"
)

// What an installer should check when no unit on a link answers.
const (
	busHint      = "check wiring, port, baud rate and parity"
	endpointHint = "check the address, and the serial side if it is a Modbus gateway"
)

// damagedHint is what to check when units on the bus at port answer with
// damaged frames and none with a whole one.
func damagedHint(port string) string {
	return fmt.Sprintf("the link's baud rate, parity or stop bits differ from the devices' (gateway probe -port %s -scan finds theirs), or the line is noisy (termination, shield)", port)
}

// tableName names one item of a table, as installers say it ("input
// register"); an s makes it plural.
var tableName = map[mb.Table]string{mb.Coil: "coil", mb.Discrete: "discrete input",
	mb.Input: "input register", mb.Holding: "holding register"}

// describe names a request's table and addresses as a template writes
// them, in decimal and hex: "input registers 0-1 (0x0000-0x0001)".
func describe(r Request) string {
	name := tableName[r.Table]
	if name == "" {
		name = string(r.Table)
	}
	if r.Count <= 1 {
		return fmt.Sprintf("%s %d (0x%04X)", name, r.Start, r.Start)
	}
	end := r.Start + r.Count - 1
	return fmt.Sprintf("%ss %d-%d (0x%04X-0x%04X)", name, r.Start, end, r.Start, end)
}
