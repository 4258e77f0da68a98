package main

// The protocol drivers this gateway ships; each registers itself by name.
import (
	_ "outpost/drivers/dc09"
	_ "outpost/drivers/dcon"
	_ "outpost/drivers/line"
	_ "outpost/drivers/modbus"
	_ "outpost/drivers/mqtt"
)
