package drivers

import (
	"fmt"
	"testing"

	"outpost/configs"
	_ "outpost/configs/modbus" // the police room's protocols
)

func TestLinks(t *testing.T) {
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"rs485-1":   {"th-hall", "smoke-hall", "door-front"},
		"rs485-2":   {"th-server", "ups-1", "siren-1"},
		"meter-lan": {"meter-main"},
	}
	links := Links(st)
	if len(links) != len(want) {
		t.Fatalf("%d links, want %d", len(links), len(want))
	}
	for _, l := range links {
		var got []string
		for _, d := range l.Devices {
			got = append(got, d.ID)
		}
		if w := want[l.Name()]; fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("link %s (%s) has devices %v, want %v", l.Name(), l.Protocol(), got, w)
		}
	}
}
