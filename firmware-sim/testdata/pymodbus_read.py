#!/usr/bin/python3
"""Reads the sim-all test device with pymodbus (an independent master) and
prints what pymodbus decodes, as one JSON object.

    pymodbus_read.py tcp HOST:PORT UNIT
    pymodbus_read.py rtu PORT UNIT BAUD PARITY(N|E|O)

Numbers are raw (before scale and offset), as pymodbus's own decoders give
them; the Go test applies scale and offset and compares with what the
simulator says it served.
"""
import json
import sys

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.constants import Endian
from pymodbus.framer.rtu_framer import ModbusRtuFramer
from pymodbus.payload import BinaryPayloadDecoder

# byte order within a word, word order
ORDERS = {
    "ABCD": (Endian.Big, Endian.Big),
    "CDAB": (Endian.Big, Endian.Little),
    "BADC": (Endian.Little, Endian.Big),
    "DCBA": (Endian.Little, Endian.Little),
}


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def checked(resp, what):
    if resp.isError():
        fail(f"{what}: {resp}")
    return resp


def int16(w):
    return w - 0x10000 if w & 0x8000 else w


def main():
    mode, target, unit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "tcp":
        host, port = target.rsplit(":", 1)
        client = ModbusTcpClient(host, port=int(port), timeout=3, retries=0)
    else:
        client = ModbusSerialClient(
            port=target,
            framer=ModbusRtuFramer,
            baudrate=int(sys.argv[4]),
            parity=sys.argv[5],
            bytesize=8,
            stopbits=1,
            timeout=3,
            retries=0,
        )
    if not client.connect():
        fail(f"cannot connect to {target}")

    regs = checked(client.read_input_registers(0, 31, slave=unit), "read input").registers

    def dec(addr, n, order):
        byteorder, wordorder = ORDERS[order]
        return BinaryPayloadDecoder.fromRegisters(regs[addr : addr + n], byteorder=byteorder, wordorder=wordorder)

    out = {
        "temp": int16(regs[0]),
        "hum": regs[1],
        "neg": int16(regs[2]),
        "i32": dec(3, 2, "ABCD").decode_32bit_int(),
        "u32": dec(5, 2, "CDAB").decode_32bit_uint(),
        "f_abcd": dec(7, 2, "ABCD").decode_32bit_float(),
        "f_cdab": dec(9, 2, "CDAB").decode_32bit_float(),
        "f_badc": dec(11, 2, "BADC").decode_32bit_float(),
        "f_dcba": dec(13, 2, "DCBA").decode_32bit_float(),
        "f64": dec(16, 4, "DCBA").decode_64bit_float(),
        "offs": int16(regs[20]),
        "far": regs[30],
    }
    hold = checked(client.read_holding_registers(0, 6, slave=unit), "read holding").registers
    out["armed"] = bool(hold[0] & 1)
    out["fault"] = bool(hold[0] >> 3 & 1)
    raw = BinaryPayloadDecoder.fromRegisters(hold[1:5], byteorder=Endian.Big, wordorder=Endian.Big).decode_string(8)
    out["model"] = raw.split(b"\0", 1)[0].decode()
    out["setpoint"] = hold[5]
    bits = checked(client.read_coils(0, 3, slave=unit), "read coils").bits
    out["relay1"], out["relay2"], out["relay3"] = bits[0], bits[1], bits[2]
    out["door"] = checked(client.read_discrete_inputs(0, 1, slave=unit), "read discrete").bits[0]

    # Writes read back.
    checked(client.write_register(5, 4321, slave=unit), "write register")
    checked(client.write_coil(1, True, slave=unit), "write coil")
    out["setpoint_written"] = checked(client.read_holding_registers(5, 1, slave=unit), "read back").registers[0]
    out["relay2_written"] = checked(client.read_coils(1, 1, slave=unit), "read back coil").bits[0]

    # Past the map: exception 02.
    resp = client.read_input_registers(0, 32, slave=unit)
    out["past_map_exception"] = resp.exception_code if resp.isError() else None
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
