package dcon

import (
	"fmt"
	"testing"

	"outpost/configs"
	dc "outpost/configs/dcon"
)

func box(checksum bool) *Module {
	tm := &configs.Template{Name: "box", Kind: "panic_button", Protocol: "dcon", Body: &dc.Template{Module: "4050", Answer: "OOII00",
		DIChannels: 7, DOChannels: 8,
		Inputs:  []dc.Input{{Signal: "pressed", Channel: 0, Event: &configs.EventRule{Kind: "panic"}}, {Signal: "tamper", Channel: 1, Invert: true}},
		Outputs: []dc.Output{{Signal: "led", Channel: 0}, {Signal: "siren", Channel: 1}}}}
	m, err := NewModule(&configs.Device{ID: "box-1", Settings: &dc.Device{Address: 1, Checksum: checksum}}, tm, 9600, nil)
	if err != nil {
		panic(err)
	}
	return m
}

// sum appends the DCON checksum.
func sum(s string) string { return s + fmt.Sprintf("%02X", sumOf(s)) }

// TestHandle: the module's answers, in its own encoding, as the ADAM-4000
// manual gives them.
func TestHandle(t *testing.T) {
	cases := []struct {
		name     string
		checksum bool
		cmd      []string // in order, on one module
		want     []string // answers without CR; "" for none
	}{
		{"read io: tamper loop closed reads 1", false, []string{"$016"}, []string{"!000200"}},
		{"name and config", false, []string{"$01M", "$012"}, []string{"!014050", "!01400600"}},
		{"set output 1, read back", false, []string{"#011101", "$016"}, []string{">", "!020200"}},
		{"set outputs 0-7 at once", false, []string{"#0100FF", "$016"}, []string{">", "!FF0200"}},
		{"invalid: output 8, bad data, unknown", false, []string{"#011801", "#011102", "$01Z"}, []string{"?01", "?01", "?01"}},
		{"checksum on", true, []string{sum("$016"), sum("$01M"), sum("$012")}, []string{sum("!000200"), sum("!014050"), sum("!01400640")}},
		{"bad or missing checksum: silent", true, []string{"$01600", "$016"}, []string{"", ""}},
	}
	for _, c := range cases {
		m := box(c.checksum)
		for i, cmd := range c.cmd {
			out, commit := m.Handle(cmd)
			if commit != nil {
				commit()
			}
			want := c.want[i]
			if want != "" {
				want += "\r"
			}
			if string(out) != want {
				t.Errorf("%s: %q answered %q, want %q", c.name, cmd, out, want)
			}
		}
	}
	m := box(false)
	m.Handle("#011101")
	m.Handle("#011101")
	m.Handle("#0100FF")
	if got := fmt.Sprint(m.Stats().Writes); got != "map[led:1 siren:3]" {
		t.Errorf("writes %s, want led 1, siren 3", got)
	}
	m = box(true)
	m.Handle("$01600")
	if st := m.Stats(); st.CRCErrors != 1 || st.Polls != 0 {
		t.Errorf("stats %+v, want one checksum error, no answer", st)
	}
}
