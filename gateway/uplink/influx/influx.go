// Package influx is the uplink to the hub's InfluxDB: it writes telemetry,
// events and health changes as points (see AppendLine for the mapping)
// through the blocking write API, so that a batch is either accepted or
// reported failed and stays in the gateway's durable queue.
package influx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	nethttp "net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	"github.com/influxdata/influxdb-client-go/v2/api/http"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/uplink"
)

// DefaultBatchSize is the number of points per write when the config sets
// none.
const DefaultBatchSize = 5000

// DefaultTimeout is how long a write may take when the config sets none.
// A write of a whole batch takes milliseconds; a server that has not
// answered in 10 s hangs, and the outage (dated from the write's start) is
// reported then rather than after 30.
const DefaultTimeout = 10 * time.Second

// minWrite is the fewest points a write is cut down to when writes take
// longer than the timeout (some 20 kB).
const minWrite = 100

// Uplink writes messages to InfluxDB (2.x write API; InfluxDB 1.8 accepts
// it with bucket "db" or "db/rp" and token "user:pass" or empty).
type Uplink struct {
	cfg    configs.Influx
	log    *slog.Logger
	client influxdb2.Client
	http   *nethttp.Client // the client's, which it does not close
	writer api.WriteAPIBlocking
	batch  int
	// size is how many points a write carries now: batch, or fewer
	// after writes took longer than the timeout.
	size atomic.Int64
}

// New returns an uplink for the server of cfg. It does no I/O.
func New(cfg configs.Influx, log *slog.Logger) *Uplink {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	// The client's own HTTP client, behind writesTaken.
	hc := influxdb2.DefaultOptions().SetHTTPRequestTimeout(uint((cfg.Timeout + time.Second - 1) / time.Second)).HTTPClient()
	opts := influxdb2.DefaultOptions().
		SetPrecision(time.Nanosecond).
		SetLogLevel(0). // errors are returned, not logged
		SetUseGZip(cfg.Gzip)
	opts.HTTPOptions().SetHTTPDoer(writesTaken{hc, configs.Redact(cfg.URL)})
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	batch := cfg.BatchSize
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	u := &Uplink{cfg: cfg, log: log, client: client, http: hc, writer: client.WriteAPIBlocking(cfg.Org, cfg.Bucket), batch: batch}
	u.size.Store(int64(batch))
	return u
}

// NewBatch returns an empty batch of points. The forwarders of both lanes
// send at once: one batch each.
func (u *Uplink) NewBatch() uplink.Batch { return &batch{u: u} }

// batch holds its messages as line protocol, each line with its newline.
// A request's body is a part of body, which is never written over: net/http
// may still read it after the request failed (a timeout), so the next
// batch writes a body of its own rather than the client copying each
// request's (2.25 MB a write of 5,000 points of 15 fields).
type batch struct {
	u    *Uplink
	line []byte // one message's line, reused
	body strings.Builder
	ends []int // ends[i] is the end of message i's line in body
	last int   // the length of the last batch's body
}

func (b *batch) Add(m *model.Message) {
	if b.body.Cap() == 0 && b.last > 0 {
		b.body.Grow(b.last) // as large as the last batch: no array outgrown
	}
	b.line = append(AppendLine(b.line[:0], m), '\n')
	b.body.Write(b.line)
	b.ends = append(b.ends, b.body.Len())
}

func (b *batch) Len() int { return len(b.ends) }

func (b *batch) Reset() {
	if n := b.body.Len(); n > 0 {
		b.last = n
		b.body = strings.Builder{}
	}
	b.ends = uplink.Emptied(b.ends)
}

// lines is messages lo to hi-1 as one request's body.
func (b *batch) lines(lo, hi int) string {
	start := 0
	if lo > 0 {
		start = b.ends[lo-1]
	}
	return b.body.String()[start:b.ends[hi-1]]
}

// Send writes the points, BatchSize per request, in order. It returns nil
// only when every request was accepted; on an error some earlier requests
// may have been written, which is harmless: a point is identified by
// measurement, tags and time, so writing it again overwrites it with the
// same fields.
//
// A request without an answer within the timeout fails the batch, as the
// server may hang; but on a slow link to the hub a backlog's full requests
// would never make it in time, where smaller ones do. So the requests that
// follow carry half as many points, down to minWrite, until one is done in
// a quarter of the timeout: then they double again, up to BatchSize.
//
// A request InfluxDB refuses for good (400 bad request, such as a field
// type conflict after a template changed; 413 too large; 422 unprocessable)
// is not an outage: it is split in halves until the points at fault are
// found, the others are written, and Send returns an *uplink.Rejected that
// lists those with InfluxDB's reason. Any other failure (the server away,
// 401, 404, 429, 5xx) fails the batch, to be sent again.
func (b *batch) Send(ctx context.Context) error {
	var rejected []uplink.Rejection
	u := b.u
	for start := 0; start < b.Len(); {
		n := min(int(u.size.Load()), b.Len()-start)
		began := time.Now()
		if err := b.write(ctx, start, start+n, &rejected); err != nil {
			var slow *slowError
			if errors.As(err, &slow) {
				u.slower(n)
			}
			return err
		}
		u.faster(n, time.Since(began))
		start += n
	}
	if len(rejected) > 0 {
		return &uplink.Rejected{Items: rejected}
	}
	return nil
}

// write writes messages lo to hi-1 in one request, splitting it as Send
// says when InfluxDB refuses it for good.
func (b *batch) write(ctx context.Context, lo, hi int, rejected *[]uplink.Rejection) error {
	u := b.u
	body := b.lines(lo, hi)
	err := u.writer.WriteRecord(ctx, body)
	if err == nil {
		return nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
		return &slowError{points: hi - lo, url: configs.Redact(u.cfg.URL), timeout: u.cfg.Timeout}
	}
	var he *http.Error
	if errors.As(err, &he) {
		if what := misconfigured(he.StatusCode, u.cfg.Bucket); what != "" {
			// An outage until the station file or the hub is mended.
			return fmt.Errorf("influx uplink: %s, writing %d points to %s: %w", what, hi-lo, configs.Redact(u.cfg.URL), err)
		}
	}
	if he == nil || !permanent(he.StatusCode) {
		return fmt.Errorf("influx uplink: write %d points to %s (bucket %s): %w", hi-lo, configs.Redact(u.cfg.URL), u.cfg.Bucket, err)
	}
	msg := he.Message // InfluxDB's own words, without the status that Error adds
	if msg == "" {
		msg = he.Error()
	}
	reason, all := refusedAll(msg, strings.Count(body, "\n"))
	if hi-lo == 1 || all {
		// Every point of the request is refused (a backlog older than
		// the retention policy, say): each is named at once, where
		// halving would take a request per point and as many again.
		for i := lo; i < hi; i++ {
			line := strings.TrimSuffix(b.lines(i, i+1), "\n")
			*rejected = append(*rejected, uplink.Rejection{Index: i, Reason: fmt.Sprintf("InfluxDB %d: %s", he.StatusCode, reason), Payload: []byte(line)})
		}
		return nil
	}
	mid := (lo + hi) / 2
	if err := b.write(ctx, lo, mid, rejected); err != nil {
		return err
	}
	return b.write(ctx, mid, hi, rejected)
}

// SendLimit is how many points a write carries now: BatchSize, or fewer
// after writes got no answer in time (see Send). A forwarder takes no
// larger batches (pipeline.Limiter), so that each write that gets through
// is acknowledged on its own.
func (u *Uplink) SendLimit() int { return int(u.size.Load()) }

// slowError is a write that got no answer within the timeout.
type slowError struct {
	points  int
	url     string
	timeout time.Duration
}

func (e *slowError) Error() string {
	return fmt.Sprintf("influx uplink: InfluxDB at %s did not take a write of %d points within %s (hub.influx.timeout): it hangs or is overloaded, or the link to it is too slow or drops packets",
		e.url, e.points, e.timeout)
}

// slower halves the writes after one of n points got no answer in time.
func (u *Uplink) slower(n int) {
	size := int64(max(n/2, min(minWrite, u.batch)))
	if size < u.size.Load() {
		u.size.Store(size)
		u.log.Warn("InfluxDB did not take a write in time: smaller writes", "points", n, "timeout", u.cfg.Timeout, "now", size)
	}
}

// faster doubles the writes after one of n points, as many as writes
// carry now, that took a quarter of the timeout at most.
func (u *Uplink) faster(n int, took time.Duration) {
	size := u.size.Load()
	if int64(n) < size || size >= int64(u.batch) || took > u.cfg.Timeout/4 {
		return
	}
	size = min(2*size, int64(u.batch))
	u.size.Store(size)
	if size == int64(u.batch) {
		u.log.Info("InfluxDB takes full writes again", "points", size)
	}
}

// droppedOf matches the end of InfluxDB's partial write error, which
// counts the points it refused.
var droppedOf = regexp.MustCompile(` dropped=([0-9]+)$`)

// refusedAll says whether InfluxDB's error msg, for a request of points
// points, refuses every one of them, and gives msg without the count.
func refusedAll(msg string, points int) (string, bool) {
	m := droppedOf.FindStringSubmatchIndex(msg)
	if m == nil {
		return msg, false
	}
	n, err := strconv.Atoi(msg[m[2]:m[3]])
	return msg[:m[0]], err == nil && n == points
}

// permanent says whether InfluxDB refuses a request for what it holds, so
// that sending it again can never succeed.
func permanent(status int) bool {
	switch status {
	case 400, 413, 422:
		return true
	}
	return false
}

// Close releases the client's connections.
func (u *Uplink) Close() {
	u.client.Close()
	u.http.CloseIdleConnections()
}

// writesTaken sends the client's requests, and takes a write answered with
// a success other than 204 No Content for a failure. InfluxDB (1.8, 2.x,
// and the servers that take its write API) answers a write it took with
// 204; a 200 comes from something else at the URL (a web application's
// page, a proxy's portal) that stored nothing, and taking it for a write
// done would drop the points from the queue for good.
type writesTaken struct {
	c   *nethttp.Client
	url string // redacted
}

func (d writesTaken) Do(req *nethttp.Request) (*nethttp.Response, error) {
	resp, err := d.c.Do(req)
	if err != nil || resp.StatusCode == nethttp.StatusNoContent || resp.StatusCode/100 != 2 || req.Method != nethttp.MethodPost {
		return resp, err
	}
	resp.Body.Close()
	return nil, notInflux(d.url, resp.Status)
}

// notInflux is the error of a write to url answered with status, a
// success other than InfluxDB's.
func notInflux(url, status string) error {
	return fmt.Errorf("the server at %s (hub.influx.url) answered a write with %s, where InfluxDB answers 204 No Content: it is not InfluxDB's write API, or something in front of InfluxDB answers for it; nothing was written", url, status)
}
