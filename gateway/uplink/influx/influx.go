// Package influx is the uplink to the hub's InfluxDB: it writes telemetry,
// events and health changes as points (see AppendLine for the mapping)
// through the blocking write API, so that a batch is either accepted or
// reported failed and stays in the gateway's durable queue.
package influx

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"

	"outpost/configs"
	"outpost/gateway/model"
)

// DefaultBatchSize is the number of points per write when the config sets
// none.
const DefaultBatchSize = 500

// Uplink writes messages to InfluxDB (2.x write API; InfluxDB 1.8 accepts
// it with bucket "db" or "db/rp" and token "user:pass" or empty).
type Uplink struct {
	cfg    configs.Influx
	log    *slog.Logger
	client influxdb2.Client
	write  api.WriteAPIBlocking
	batch  int
}

// New returns an uplink for the server of cfg. It does no I/O.
func New(cfg configs.Influx, log *slog.Logger) *Uplink {
	opts := influxdb2.DefaultOptions().
		SetPrecision(time.Nanosecond).
		SetLogLevel(0).           // errors are returned, not logged
		SetHTTPRequestTimeout(30) // seconds; ctx usually ends sooner
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	batch := cfg.BatchSize
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	return &Uplink{cfg: cfg, log: log, client: client, write: client.WriteAPIBlocking(cfg.Org, cfg.Bucket), batch: batch}
}

// Send writes msgs as points, BatchSize points per request, in order. It
// returns nil only when every request was accepted; on an error some
// earlier requests may have been written, which is harmless: a point is
// identified by measurement, tags and time, so writing it again
// overwrites it with the same fields.
func (u *Uplink) Send(ctx context.Context, msgs []model.Message) error {
	var buf []byte
	for start := 0; start < len(msgs); start += u.batch {
		end := min(start+u.batch, len(msgs))
		buf = buf[:0]
		for i := start; i < end; i++ {
			if i > start {
				buf = append(buf, '\n')
			}
			buf = AppendLine(buf, &msgs[i])
		}
		if err := u.write.WriteRecord(ctx, string(buf)); err != nil {
			return fmt.Errorf("influx uplink: write %d points to %s (bucket %s): %w", end-start, u.cfg.URL, u.cfg.Bucket, err)
		}
	}
	return nil
}

// Close releases the client's connections.
func (u *Uplink) Close() { u.client.Close() }
