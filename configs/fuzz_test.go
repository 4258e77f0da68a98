package configs_test

import (
	"os"
	"path/filepath"
	"testing"

	"outpost/configs"
	_ "outpost/configs/modbus"
)

// FuzzParse: whatever a station file holds, loading it gives a station or
// errors, never a panic, and every error names a position in a file.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/errors/*.yaml")
	files = append(files, "police-room.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := configs.Parse("station.yaml", data)
		if err == nil {
			if st == nil || len(st.Devices) == 0 {
				t.Fatalf("no error, but station %v", st)
			}
			return
		}
		errs, ok := err.(configs.Errors)
		if !ok || len(errs) == 0 {
			t.Fatalf("error of type %T: %v", err, err)
		}
		for _, e := range errs {
			if e.Line < 1 || e.Col < 1 || e.File == "" || e.Msg == "" {
				t.Fatalf("error without a position: %+v", e)
			}
		}
	})
}
