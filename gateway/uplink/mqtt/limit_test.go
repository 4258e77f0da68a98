package mqtt

import (
	"fmt"
	"strings"
	"testing"
)

// TestLearn: the limit settles an eighth below a packet the broker dropped,
// never above a limit known already nor below minLearned, and a broker
// that drops packets a station cannot do without is named as the fault.
func TestLearn(t *testing.T) {
	const floor = "below the least a station needs, 1024 bytes"
	for _, tc := range []struct {
		name        string
		known       int // the limit before
		dropped     int // the packet the broker dropped
		want        int // the limit after
		brokerFault bool
	}{
		{name: "first drop", dropped: 3000, want: 2625},
		{name: "a larger packet keeps the lower limit", known: 2000, dropped: 3000, want: 2000},
		{name: "a smaller packet lowers it", known: 2625, dropped: 2000, want: 1750},
		{name: "just over what a station needs", dropped: 1025, want: 897},
		{name: "what a station needs", dropped: 1024, want: 896, brokerFault: true},
		{name: "under it, floored", dropped: 450, want: minLearned, brokerFault: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewPacketLimit(DefaultPrefix, tc.known)
			why := l.learn(tc.dropped)
			if got := l.Max(); got != tc.want {
				t.Errorf("learn(%d) from %d: limit %d, want %d", tc.dropped, tc.known, got, tc.want)
			}
			if want := fmt.Sprintf("from now on no message over %d bytes is published", tc.want); !strings.HasPrefix(why, want) {
				t.Errorf("learn(%d) says %q, want it to name the limit %d", tc.dropped, why, tc.want)
			}
			if got := strings.Contains(why, floor); got != tc.brokerFault {
				t.Errorf("learn(%d) says %q: names the broker's limit as too low %v, want %v", tc.dropped, why, got, tc.brokerFault)
			}
		})
	}
}
