// Package protocols loads the station-file part of every protocol outpost
// ships, for the programs that read station files without running the
// protocols (the testbench, the reference docs). The gateway gets them
// through its drivers, the simulator through its device packages.
package protocols

import (
	_ "outpost/configs/dc09"
	_ "outpost/configs/dcon"
	_ "outpost/configs/line"
	_ "outpost/configs/modbus"
	_ "outpost/configs/mqtt"
)
