package status

import (
	"github.com/prometheus/client_golang/prometheus"

	"outpost/gateway/model"
)

// The metrics are read from a Snapshot at each scrape: the board and the
// queues keep the figures, the metrics only show them.
var (
	descDeviceState = prometheus.NewDesc("outpost_device_state",
		"1 for the device's health state (online, degraded, offline, unknown), 0 for the others.",
		[]string{"device", "kind", "link", "state"}, nil)
	descDeviceSince = prometheus.NewDesc("outpost_device_state_since_seconds",
		"When the device entered its health state, Unix time.", []string{"device"}, nil)
	descDeviceLastSeen = prometheus.NewDesc("outpost_device_last_seen_seconds",
		"When a good value last came from the device, Unix time (absent before the first).", []string{"device"}, nil)
	descDeviceCounter = prometheus.NewDesc("outpost_device_errors_total",
		"The device's health counters since the gateway started: timeouts, crc_errors, exceptions, bad_frames, ...",
		[]string{"device", "counter"}, nil)
	descDeviceUnchanged = prometheus.NewDesc("outpost_device_unchanged_readings_total",
		"The device's readings report by exception left out since the gateway started, each within its deadband of the last sent.",
		[]string{"device"}, nil)
	descDeviceRTT = prometheus.NewDesc("outpost_device_rtt_seconds",
		"The round trip of the device's last answered request.", []string{"device"}, nil)
	descUplinkUp = prometheus.NewDesc("outpost_uplink_connected",
		"1 while the uplink reaches its hub store.", []string{"uplink"}, nil)
	descQueueRecords = prometheus.NewDesc("outpost_queue_records",
		"Records waiting in the uplink's queue.", []string{"uplink", "lane"}, nil)
	descQueueReadings = prometheus.NewDesc("outpost_queue_readings",
		"Readings waiting in the uplink's queue.", []string{"uplink"}, nil)
	descQueueBytes = prometheus.NewDesc("outpost_queue_bytes",
		"Bytes of the uplink's queue on disk.", []string{"uplink"}, nil)
	descQueueMemory = prometheus.NewDesc("outpost_queue_alarms_in_memory",
		"Alarms held in memory because the disk refuses them.", []string{"uplink"}, nil)
	descQueueTelemetryMemory = prometheus.NewDesc("outpost_queue_telemetry_in_memory",
		"Telemetry records held in memory because the disk refuses them.", []string{"uplink"}, nil)
	descDropped = prometheus.NewDesc("outpost_queue_dropped_readings_total",
		"Readings the uplink's queue dropped since start, at its cap, or refused by the disk with the memory reserve full.", []string{"uplink"}, nil)
	descLostAlarms = prometheus.NewDesc("outpost_queue_lost_alarms_total",
		"Alarms lost since start: refused by the disk with the memory reserve full, or in queue files deleted before they were sent.", []string{"uplink"}, nil)
	descDeadLetters = prometheus.NewDesc("outpost_dead_letters_total",
		"Messages the hub refused for good since start, kept in the dead-letter directory.", []string{"uplink"}, nil)
	descQueueAge = prometheus.NewDesc("outpost_queue_oldest_age_seconds",
		"How long the oldest record in the uplink's queue has waited (0 when none waits).", []string{"uplink"}, nil)
	descDelivered = prometheus.NewDesc("outpost_forwarder_delivered_total",
		"Messages the hub took from the uplink's lane since start.", []string{"uplink", "lane"}, nil)
	descSendFailures = prometheus.NewDesc("outpost_forwarder_send_failures_total",
		"Sends of the lane the hub did not accept since start (each retried).", []string{"uplink", "lane"}, nil)
	descRestarts = prometheus.NewDesc("outpost_forwarder_restarts_total",
		"Times the lane's forwarder failed and was restarted since start.", []string{"uplink", "lane"}, nil)
	descLastDelivery = prometheus.NewDesc("outpost_forwarder_last_delivery_seconds",
		"When the hub last took a batch of the lane, Unix time (absent before the first).", []string{"uplink", "lane"}, nil)
	descDiskFree = prometheus.NewDesc("outpost_state_disk_free_bytes",
		"Space left on the file system of the state directory.", nil, nil)
)

// NewDeliveryHistogram is the histogram of how long messages took from
// the queue to the hub's acknowledgement, by uplink and lane; the
// forwarders observe it, the status server serves it.
func NewDeliveryHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "outpost_delivery_seconds",
		Help:    "Time from a message's append to the queue to the hub's acknowledgement, by uplink and lane.",
		Buckets: []float64{0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600},
	}, []string{"uplink", "lane"})
}

// NewRoundTripHistogram is the histogram of devices' round trips (each
// poll's last answered request, from the request sent to its answer), by
// link and device; the drivers observe it, the status server serves it.
func NewRoundTripHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "outpost_device_round_trip_seconds",
		Help:    "Round trip of each poll's last answered request, from the request sent to its answer, by link and device.",
		Buckets: []float64{0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1},
	}, []string{"link", "device"})
}

var deviceStates = []model.HealthState{model.Online, model.Degraded, model.Offline, Unknown}

type collector struct{ snap func() Snapshot }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDeviceState, descDeviceSince, descDeviceLastSeen, descDeviceCounter, descDeviceUnchanged, descDeviceRTT, descUplinkUp,
		descQueueRecords, descQueueReadings, descQueueBytes, descQueueAge, descQueueMemory, descQueueTelemetryMemory, descDropped, descLostAlarms, descDeadLetters,
		descDelivered, descSendFailures, descRestarts, descLastDelivery, descDiskFree} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, d := range s.Devices {
		for _, st := range deviceStates {
			gauge(descDeviceState, b2f(d.State == st), d.ID, d.Kind, d.Link, string(st))
		}
		gauge(descDeviceSince, float64(d.Since.Unix()), d.ID)
		if !d.LastSeen.IsZero() {
			gauge(descDeviceLastSeen, float64(d.LastSeen.UnixMilli())/1000, d.ID)
		}
		for name, n := range d.Counters {
			if name == model.RTTCounter {
				gauge(descDeviceRTT, float64(n)/1e6, d.ID)
				continue
			}
			counter(descDeviceCounter, float64(n), d.ID, name)
		}
		counter(descDeviceUnchanged, float64(d.Unchanged), d.ID)
	}
	for _, u := range s.Uplinks {
		q := u.Queue
		gauge(descUplinkUp, b2f(u.Connected), u.Name)
		gauge(descQueueRecords, float64(q.Alarms), u.Name, "alarm")
		gauge(descQueueRecords, float64(q.Telemetry), u.Name, "telemetry")
		gauge(descQueueReadings, float64(q.Readings), u.Name)
		gauge(descQueueBytes, float64(q.Bytes), u.Name)
		gauge(descQueueAge, q.OldestAgeS, u.Name)
		gauge(descQueueMemory, float64(q.InMemory), u.Name)
		gauge(descQueueTelemetryMemory, float64(q.TelemetryInMemory), u.Name)
		counter(descDropped, float64(q.DroppedReadings), u.Name)
		counter(descLostAlarms, float64(q.LostAlarms), u.Name)
		counter(descDeadLetters, float64(u.DeadLetters), u.Name)
		for _, f := range u.Forwarders {
			counter(descDelivered, float64(f.Delivered), u.Name, f.Lane)
			counter(descSendFailures, float64(f.Failures), u.Name, f.Lane)
			counter(descRestarts, float64(f.Restarts), u.Name, f.Lane)
			if !f.LastDelivery.IsZero() {
				gauge(descLastDelivery, float64(f.LastDelivery.UnixMilli())/1000, u.Name, f.Lane)
			}
		}
	}
	if s.Disk.Error == "" {
		gauge(descDiskFree, float64(s.Disk.FreeBytes))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
