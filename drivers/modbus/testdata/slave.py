"""A Modbus slave for the driver's interop tests, on pymodbus.

Usage: slave.py SPEC.json tcp
       slave.py SPEC.json serial PATH BAUD PARITY(N|E|O)

SPEC maps unit ids to tables of register values:
  {"1": {"hr": {"0": 4660, ...}, "ir": {...}, "co": {"0": 1}, "di": {...}}}
Addresses are zero-based (zero_mode). Units not in SPEC get no answer.
Each table holds at least 1024 entries from address 0, and more when SPEC
sets an address beyond (e.g. 0x4000 = 16384); unset entries read 0.
A unit whose tables include "sparse" (any value, e.g. {}) instead holds only
the addresses SPEC sets: a read that touches any other address gets
exception 02 (illegal data address), as many real meters answer.
Prints "ready PORT" (tcp) or "ready" (serial) once it serves.
"""
import asyncio
import json
import logging
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
    ModbusSparseDataBlock,
)
from pymodbus.server.async_io import ModbusSerialServer, ModbusTcpServer
from pymodbus.transaction import ModbusRtuFramer, ModbusSocketFramer

SIZE = 1024


def block(values):
    size = max([SIZE] + [int(addr) + 1 for addr in values])
    data = [0] * size
    for addr, v in values.items():
        data[int(addr)] = v
    return ModbusSequentialDataBlock(0, data)


def sparse_block(values):
    return ModbusSparseDataBlock({int(addr): v for addr, v in values.items()})


def context(spec):
    slaves = {}
    for unit, tables in spec.items():
        make = sparse_block if "sparse" in tables else block
        slaves[int(unit)] = ModbusSlaveContext(
            zero_mode=True,
            hr=make(tables.get("hr", {})),
            ir=make(tables.get("ir", {})),
            co=make(tables.get("co", {})),
            di=make(tables.get("di", {})),
        )
    return ModbusServerContext(slaves=slaves, single=False)


async def main():
    logging.basicConfig(level=logging.CRITICAL)
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    ctx = context(spec)
    if sys.argv[2] == "tcp":
        server = ModbusTcpServer(
            ctx, ModbusSocketFramer, address=("127.0.0.1", 0), ignore_missing_slaves=True
        )
        task = asyncio.create_task(server.serve_forever())
        await server.serving
        port = server.server.sockets[0].getsockname()[1]
        print("ready", port, flush=True)
        await task
    else:
        path, baud, parity = sys.argv[3], int(sys.argv[4]), sys.argv[5]
        server = ModbusSerialServer(
            ctx, ModbusRtuFramer, port=path, baudrate=baud, parity=parity,
            bytesize=8, stopbits=1, timeout=0.005, ignore_missing_slaves=True,
        )
        await server.start()
        print("ready", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
