package modbus

import (
	"errors"
	"fmt"
	"time"

	"github.com/goburrow/modbus"

	mb "outpost/configs/modbus"
	"outpost/drivers/bus"
	"outpost/drivers/crc16"
)

// Function codes.
const (
	fcReadCoils       = 0x01
	fcReadDiscrete    = 0x02
	fcReadHolding     = 0x03
	fcReadInput       = 0x04
	fcWriteCoil       = 0x05
	fcWriteRegister   = 0x06
	fcWriteCoils      = 0x0F
	fcWriteRegisters  = 0x10
	rtuWriteAnswerLen = 8 // unit, function, address, value or quantity, CRC
	rtuReadRequestLen = 8 // unit, function, start, count, CRC
)

// isRead says whether a function code is a read, whose answer carries a
// byte count.
func isRead(fc byte) bool { return fc >= fcReadCoils && fc <= fcReadInput }

// rtuResponseLength is the length of the normal RTU response to a read or
// write request ADU (unit, function, address, quantity or value, ...), or
// an error for a request we do not know how to size.
func rtuResponseLength(req []byte) (int, error) {
	if len(req) < 6 {
		return 0, fmt.Errorf("request of %d bytes is too short", len(req))
	}
	qty := int(req[4])<<8 | int(req[5])
	switch req[1] {
	case fcReadCoils, fcReadDiscrete:
		return rtuResponseBytes + (qty+7)/8, nil
	case fcReadHolding, fcReadInput:
		return rtuResponseBytes + 2*qty, nil
	case fcWriteCoil, fcWriteRegister, fcWriteCoils, fcWriteRegisters:
		return rtuWriteAnswerLen, nil
	}
	return 0, fmt.Errorf("function %d not supported", req[1])
}

// What can be wrong with a received frame (FrameError.Kind).
const (
	badCRC      = "crc"
	badUnit     = "unit id"
	badFunction = "function"
	badLength   = "length"
	badEcho     = "echo"
)

// FrameError is a response that could not be a valid answer to the
// request: the transport resynchronised by draining Dropped bytes.
type FrameError struct {
	Kind    string // crc, unit id, function, length, protocol id, transaction id
	Detail  string
	Dropped int
	Master  *Heard // on RTU, another master's request heard lately, if one was
}

func (e *FrameError) Error() string { return e.text() + e.Master.suffix() }

// text is the error without the other master.
func (e *FrameError) text() string {
	return fmt.Sprintf("bad frame (%s: %s), %d bytes dropped", e.Kind, e.Detail, e.Dropped)
}

// TimeoutError is a request that got no complete answer in time.
type TimeoutError struct {
	After time.Duration
	Got   int  // bytes received
	Other byte // on RTU, the unit whose whole frame came instead, if not 0
	// Master, on RTU, is another master's request heard on the bus lately
	// (see Heard), if one was.
	Master *Heard
}

func (e *TimeoutError) Error() string { return e.text() + e.Master.suffix() }

// text is the error without the other master.
func (e *TimeoutError) text() string {
	switch {
	case e.Got > 0:
		return fmt.Sprintf("timeout after %v (%d bytes of a response)", e.After, e.Got)
	case e.Other != 0 && e.Master != nil && e.Master.Unit == e.Other:
		return fmt.Sprintf("timeout after %v (a request of another master came instead)", e.After)
	case e.Other != 0:
		return fmt.Sprintf("timeout after %v (a frame from unit %d came instead: a late answer to an earlier request)", e.After, e.Other)
	}
	return fmt.Sprintf("timeout after %v", e.After)
}

// master is the Master field of the timeout or bad frame err is, or nil
// for another error.
func master(err error) **Heard {
	var te *TimeoutError
	var fe *FrameError
	switch {
	case errors.As(err, &te):
		return &te.Master
	case errors.As(err, &fe):
		return &fe.Master
	}
	return nil
}

// masterOf is the other master a failed request's error names, or nil.
func masterOf(err error) *Heard {
	if m := master(err); m != nil {
		return *m
	}
	return nil
}

// Heard is a read request that another master sent on an RTU bus, heard
// between the gateway's own requests or instead of an answer. Two masters
// on one bus talk over each other: frames are damaged or lost on both
// sides, and no wiring fix helps.
type Heard struct {
	Unit, Function byte
	Start, Count   uint16
}

// OtherMasterError is another master's request heard on an RTU bus while
// the gateway's request went on: not the request's failure, but counted
// (other_master) with the device's health, so that the hub sees it too.
type OtherMasterError struct{ Heard Heard }

func (e *OtherMasterError) Error() string {
	return "another master polls this bus (" + e.Heard.String() + "): " + bus.TwoMasters
}

func (h Heard) String() string {
	what := tableName[readTable[h.Function]]
	if h.Count != 1 {
		what += "s"
	}
	return fmt.Sprintf("unit %d asked for %d %s from %d (0x%04X)", h.Unit, h.Count, what, h.Start, h.Start)
}

// suffix is what a failed request's error adds when h was heard lately:
// nothing for nil.
func (h *Heard) suffix() string {
	if h == nil {
		return ""
	}
	return "; " + (&OtherMasterError{Heard: *h}).Error()
}

// readTable is the table each read function reads.
var readTable = map[byte]mb.Table{fcReadCoils: mb.Coil, fcReadDiscrete: mb.Discrete, fcReadHolding: mb.Holding, fcReadInput: mb.Input}

// readRequestIn finds the last read request of another master in what an
// RTU bus carried: 8 bytes of a unit 1-247, a read function (1-4), a start
// and a count the function allows (1-2000 bits, 1-125 registers), and a
// CRC that holds. An answer to a read of registers is never 8 bytes long
// (5 and an even byte count); one to a read of 17-24 bits is, but its byte
// count (3) stands where a request has the start's high byte, so such
// frames are not taken. Pure, for fuzzing.
func readRequestIn(b []byte) (Heard, bool) {
	for i := len(b) - rtuReadRequestLen; i >= 0; i-- {
		f := b[i : i+rtuReadRequestLen]
		unit, fc := f[0], f[1]
		start, count := uint16(f[2])<<8|uint16(f[3]), uint16(f[4])<<8|uint16(f[5])
		most := uint16(125)
		if fc == fcReadCoils || fc == fcReadDiscrete {
			most = 2000
			if f[2] == 3 {
				continue // perhaps an answer of 3 bytes of bits
			}
		}
		if unit >= 1 && unit <= 247 && isRead(fc) && count >= 1 && count <= most && crcHolds(f) {
			return Heard{Unit: unit, Function: fc, Start: start, Count: count}, true
		}
	}
	return Heard{}, false
}

// Timeout marks it as a timeout for net.Error-style checks.
func (e *TimeoutError) Timeout() bool { return true }

// checkRTU checks a complete RTU frame against its request: unit id,
// function (normal or exception) and CRC. It is pure, for fuzzing.
func checkRTU(req, resp []byte) error {
	if len(resp) < 4 {
		return &FrameError{Kind: badLength, Detail: fmt.Sprintf("%d bytes", len(resp))}
	}
	if resp[0] != req[0] {
		return &FrameError{Kind: badUnit, Detail: fmt.Sprintf("got %d, want %d", resp[0], req[0])}
	}
	if resp[1] != req[1] && resp[1] != req[1]|0x80 {
		return &FrameError{Kind: badFunction, Detail: fmt.Sprintf("got %d, want %d", resp[1], req[1])}
	}
	n := len(resp)
	if !crcHolds(resp) {
		return &FrameError{Kind: badCRC, Detail: fmt.Sprintf("got %04x, want %04x", uint16(resp[n-2])|uint16(resp[n-1])<<8, crc16.Modbus(resp[:n-2]))}
	}
	if resp[1] == req[1] && isRead(req[1]) && int(resp[2]) != n-5 {
		return &FrameError{Kind: badLength, Detail: fmt.Sprintf("byte count %d in a frame of %d", resp[2], n)}
	}
	return nil
}

// crcHolds says whether an RTU frame of at least 3 bytes ends in the CRC
// of the rest (low byte first).
func crcHolds(f []byte) bool {
	n := len(f)
	return crc16.Modbus(f[:n-2]) == uint16(f[n-2])|uint16(f[n-1])<<8
}

// exceptionName names a Modbus exception code.
func exceptionName(code byte) string {
	switch code {
	case 1:
		return "illegal function"
	case 2:
		return "illegal data address"
	case 3:
		return "illegal data value"
	case 4:
		return "server device failure"
	case 5:
		return "acknowledge"
	case 6:
		return "server device busy"
	case 8:
		return "memory parity error"
	case 10:
		return "gateway path unavailable"
	case 11:
		return "gateway target device failed to respond"
	}
	return "unknown"
}

// noAnswer says whether a request failed because nothing answered it: a
// timeout, or a Modbus TCP gateway saying its target did not respond or
// cannot be reached (exceptions 11 and 10), which is a timeout seen from
// behind the gateway.
func noAnswer(err error) bool {
	var te *TimeoutError
	var me *modbus.ModbusError
	switch {
	case errors.As(err, &te):
		return true
	case errors.As(err, &me):
		return me.ExceptionCode == modbus.ExceptionCodeGatewayPathUnavailable ||
			me.ExceptionCode == modbus.ExceptionCodeGatewayTargetDeviceFailedToRespond
	}
	return false
}

// noSuchRegister says whether a device refused a read as asking for what
// it does not have: a register address (exception 2) or a function, such as
// reading input registers from a device that holds only holding registers
// (exception 1).
func noSuchRegister(err error) bool {
	var me *modbus.ModbusError
	return errors.As(err, &me) && (me.ExceptionCode == modbus.ExceptionCodeIllegalDataAddress ||
		me.ExceptionCode == modbus.ExceptionCodeIllegalFunction)
}

// counting is a note that appends the counter of each error it hears to
// counters: what a try met on the way, for the device's health.
func counting(counters *[]string) func(error) {
	return func(err error) {
		counter, _ := errClass(err)
		*counters = append(*counters, counter)
	}
}

// errClass sorts a request error into a counter name and a short reason
// (without the other master a timeout or a bad frame may name: see
// masterOf).
func errClass(err error) (counter, reason string) {
	var me *modbus.ModbusError
	var fe *FrameError
	var te *TimeoutError
	var ld *bus.LinkDownError
	var om *OtherMasterError
	switch {
	case errors.As(err, &ld):
		return "link_down", err.Error()
	case errors.As(err, &om):
		return "other_master", err.Error()
	case errors.As(err, &me):
		reason = fmt.Sprintf("exception %d (%s)", me.ExceptionCode, exceptionName(me.ExceptionCode))
		if noAnswer(err) {
			return "timeouts", reason // the device behind a Modbus TCP gateway did not answer
		}
		return "exceptions", reason
	case errors.As(err, &te):
		return "timeouts", te.text()
	case errors.As(err, &fe):
		if fe.Kind == badCRC {
			return "crc_errors", fe.text()
		}
		return "frame_errors", fe.text()
	}
	return "io_errors", err.Error()
}
