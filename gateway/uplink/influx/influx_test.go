package influx

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/influxdata/influxdb-client-go/v2/api/write"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/uplink"
	"outpost/testbench/hub"
)

// A forwarder takes batches no larger than the writes the uplink makes now.
var _ pipeline.Limiter = (*Uplink)(nil)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

var t0 = time.Date(2026, 11, 28, 13, 37, 0, 123456789, time.UTC)

func telemetry() model.Message {
	return model.Message{
		Station: "pr-0001", StationType: model.PoliceRoom, Device: "th-hall", DeviceKind: "temp_humidity",
		Seq: 42, Time: t0, Kind: model.KindTelemetry,
		Readings: []model.Reading{
			{Signal: "temperature", Value: model.Number(21.5), Unit: "°C", Quality: model.Good},
			{Signal: "humidity", Value: model.Number(1e21), Unit: "%", Quality: model.Uncertain},
			{Signal: "door open", Value: model.Bool(true), Quality: model.Good},
			{Signal: "model", Value: model.String(`TH "2" \ x`), Quality: model.Good},
			{Signal: "pressure", Quality: model.Bad},
			{Signal: "nan", Value: model.Number(math.NaN()), Quality: model.Good},
		},
	}
}

func event() model.Message {
	return model.Message{
		Station: "pr-0001", StationType: model.PoliceRoom, Device: "smoke-hall", DeviceKind: "smoke_detector",
		Seq: 7, Time: t0.Add(time.Second), Kind: model.KindEvent, Historical: true,
		Event: &model.Event{Kind: model.EventSmoke, Severity: model.Critical, Details: map[string]string{"zone": "hall", "level": "3"}},
	}
}

func health() model.Message {
	return model.Message{
		Station: "pr-0001", StationType: model.PoliceRoom, Device: "ups-1", DeviceKind: "ups",
		Seq: 9, Time: t0.Add(2 * time.Second), Kind: model.KindHealth,
		Health: &model.Health{State: model.Offline, Reason: "no answer", Counters: map[string]uint64{"polls": 12, "timeouts": math.MaxUint64}},
	}
}

func TestAppendLine(t *testing.T) {
	hist := telemetry()
	hist.Historical = true
	hist.Readings = nil
	hist.StationType = ""
	tests := []struct {
		name string
		msg  model.Message
		want string
	}{
		{"telemetry", telemetry(), `temp_humidity,device=th-hall,station=pr-0001,station_type=police_room temperature=21.5,humidity=1e+21,humidity_quality="uncertain",door\ open=true,model="TH \"2\" \\ x",pressure_quality="bad",nan_quality="bad",seq=42i 1795873020123456789`},
		{"historical, empty tag left out", hist, `temp_humidity,device=th-hall,station=pr-0001 historical=true,seq=42i 1795873020123456789`},
		{"event", event(), `outpost_event,device=smoke-hall,device_kind=smoke_detector,kind=smoke,severity=critical,station=pr-0001,station_type=police_room details="{\"level\":\"3\",\"zone\":\"hall\"}",seq=7i 1795873021123456789`},
		{"health", health(), `outpost_health,device=ups-1,device_kind=ups,station=pr-0001,station_type=police_room polls=12i,timeouts=9223372036854775807i,reason="no answer",seq=9i,state="offline" 1795873022123456789`},
		{"result", model.Message{Station: "sp-0007", StationType: model.SafetyPost, Device: "siren-1", DeviceKind: "siren", Seq: 4, Time: time.Unix(0, 5), Kind: model.KindResult,
			Result: &model.Result{ID: "c-42", Action: "siren_on", Status: model.ResultFailed, Reason: `no answer from module 01`}},
			`outpost_command,action=siren_on,device=siren-1,device_kind=siren,station=sp-0007,station_type=safety_post,status=failed id="c-42",reason="no answer from module 01",seq=4i 5`},
		{"escapes", model.Message{Station: "a,b=c d", Device: "x\ny", DeviceKind: "k ,=", Kind: model.KindTelemetry, Time: time.Unix(0, 5)}, `k\ \,=,device=x\ y,station=a\,b\=c\ d seq=0i 5`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(AppendLine(nil, &tt.msg)); got != tt.want {
				t.Errorf("AppendLine:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func startInflux(t *testing.T) *hub.Influx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in, err := hub.StartInflux(ctx, t.TempDir(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Stop)
	return in
}

func newUplink(t testing.TB, in *hub.Influx, batch int) *Uplink {
	u := New(configs.Influx{URL: in.URL(), Bucket: in.Database(), Org: "ignored", BatchSize: batch}, quiet())
	t.Cleanup(u.Close)
	return u
}

// rows queries measurement and returns its rows, each as column → value
// with values as JSON would print them (strings quoted, numbers bare).
func rows(t *testing.T, in *hub.Influx, measurement string) []string {
	t.Helper()
	series, err := in.Query(context.Background(), fmt.Sprintf(`SELECT * FROM %q`, measurement))
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 {
		t.Fatalf("%s: %d series, want 1", measurement, len(series))
	}
	var out []string
	for _, r := range series[0].Rows() {
		b, _ := json.Marshal(r) // map keys sorted
		out = append(out, string(b))
	}
	return out
}

func TestSendMapping(t *testing.T) {
	in := startInflux(t)
	u := newUplink(t, in, 0)
	msgs := []model.Message{telemetry(), event(), health()}
	second := telemetry()
	second.Seq, second.Time, second.Readings = 43, t0.Add(time.Millisecond), []model.Reading{{Signal: "temperature", Value: model.Number(-0.1), Quality: model.Good}, {Signal: "model", Value: model.String("line1\nline2"), Quality: model.Good}}
	msgs = append(msgs, second)
	if err := uplink.SendAll(context.Background(), u.NewBatch(), msgs); err != nil {
		t.Fatalf("Send: %v", err)
	}
	tests := []struct {
		measurement string
		want        []string
	}{
		{"temp_humidity", []string{
			`{"device":"th-hall","door open":true,"humidity":1e+21,"humidity_quality":"uncertain","model":"TH \"2\" \\ x","nan_quality":"bad","pressure_quality":"bad","seq":42,"station":"pr-0001","station_type":"police_room","temperature":21.5,"time":1795873020123456789}`,
			`{"device":"th-hall","model":"line1\nline2","seq":43,"station":"pr-0001","station_type":"police_room","temperature":-0.1,"time":1795873020124456789}`,
		}},
		{EventMeasurement, []string{
			`{"details":"{\"level\":\"3\",\"zone\":\"hall\"}","device":"smoke-hall","device_kind":"smoke_detector","kind":"smoke","seq":7,"severity":"critical","station":"pr-0001","station_type":"police_room","time":1795873021123456789}`,
		}},
		{HealthMeasurement, []string{
			`{"device":"ups-1","device_kind":"ups","polls":12,"reason":"no answer","seq":9,"state":"offline","station":"pr-0001","station_type":"police_room","time":1795873022123456789,"timeouts":9223372036854775807}`,
		}},
	}
	for _, tt := range tests {
		got := rows(t, in, tt.measurement)
		if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
			t.Errorf("%s:\n got %s\nwant %s", tt.measurement, strings.Join(got, "\n     "), strings.Join(tt.want, "\n     "))
		}
	}
	// Field types as InfluxDB stored them.
	series, err := in.Query(context.Background(), `SHOW FIELD KEYS FROM "temp_humidity"`)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, r := range series[0].Values {
		types = append(types, fmt.Sprintf("%v:%v", r[0], r[1]))
	}
	if got, want := strings.Join(types, " "), "door open:boolean humidity:float humidity_quality:string model:string nan_quality:string pressure_quality:string seq:integer temperature:float"; got != want {
		t.Errorf("field types %s, want %s", got, want)
	}
}

// Sending a batch again (as after a lost acknowledgement) overwrites the
// same points; batches larger than BatchSize are split and all arrive.
func TestSendIdempotentAndBatched(t *testing.T) {
	in := startInflux(t)
	u := newUplink(t, in, 7)
	msgs := make([]model.Message, 100)
	for i := range msgs {
		msgs[i] = telemetry()
		msgs[i].Seq = uint64(i + 1)
		msgs[i].Time = t0.Add(time.Duration(i) * time.Second)
	}
	ctx := context.Background()
	for range 2 {
		if err := uplink.SendAll(ctx, u.NewBatch(), msgs); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	if n, err := in.Count(ctx, "temp_humidity"); err != nil || n != 100 {
		t.Fatalf("count after sending 100 points twice = %d, %v; want 100", n, err)
	}
	if err := uplink.SendAll(ctx, u.NewBatch(), nil); err != nil {
		t.Errorf("Send of nothing: %v", err)
	}
}

func TestSendServerDown(t *testing.T) {
	in := startInflux(t)
	u := newUplink(t, in, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	in.Kill()
	err := uplink.SendAll(ctx, u.NewBatch(), []model.Message{telemetry()})
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Send to a dead server = %v, want connection refused", err)
	}
	if err := in.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := uplink.SendAll(ctx, u.NewBatch(), []model.Message{telemetry()}); err != nil {
		t.Fatalf("Send after restart: %v", err)
	}
	// A bucket that does not exist is a failed write, not a silent one.
	bad := New(configs.Influx{URL: in.URL(), Bucket: "nosuchdb"}, quiet())
	defer bad.Close()
	if err := uplink.SendAll(ctx, bad.NewBatch(), []model.Message{telemetry()}); err == nil ||
		!strings.HasPrefix(err.Error(), `influx uplink: InfluxDB has no bucket or database "nosuchdb" (hub.influx.bucket), writing 1 points to `) ||
		!strings.Contains(err.Error(), "database not found") {
		t.Fatalf("Send to a missing database = %v, want it named, and database not found", err)
	}
}

// TestSendSlowLink: on a link to the hub too slow for a full write within
// the timeout (a weak cellular one), each write that got no answer in time
// fails, and halves the writes that follow, until they make it and every
// point arrives; on a link too slow even for a hundred points, the writes
// stay at a hundred and fail with an error that says what to look at.
func TestSendSlowLink(t *testing.T) {
	t.Parallel() // it waits on the link most of the time
	in := startInflux(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	path, err := hub.NewPath(ctx, strings.TrimPrefix(in.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer path.Close()
	u := New(configs.Influx{URL: "http://" + path.Addr(), Bucket: in.Database(), BatchSize: 1000, Timeout: time.Second}, quiet())
	defer u.Close()
	// send sends msgs again until InfluxDB takes them, as the forwarder
	// does, and returns the points of each write that got no answer in
	// time, and the last error.
	send := func(msgs []model.Message, tries int) (failed []int, err error) {
		b := u.NewBatch()
		for i := range msgs {
			b.Add(&msgs[i])
		}
		for range tries {
			if err = b.Send(ctx); err == nil {
				return failed, nil
			}
			var slow *slowError
			if !errors.As(err, &slow) {
				t.Fatalf("Send: %v, want a write without an answer in time", err)
			}
			failed = append(failed, slow.points)
		}
		return failed, err
	}
	path.SetRate(100 << 10) // 1,000 points (229 KB) take some 2.2 s, 250 some 0.6 s
	failed, err := send(benchMessages(1000), 5)
	if err != nil {
		t.Fatalf("Send over 100 KiB/s, again and again: %v", err)
	}
	if n, err := in.Count(ctx, "power_meter"); err != nil || n != 1000 {
		t.Fatalf("InfluxDB holds %d points (%v), want 1000", n, err)
	}
	size := u.size.Load()
	if len(failed) == 0 || failed[0] != 1000 || size >= 1000 || size < minWrite {
		t.Errorf("writes that failed %v, writes of %d points now; want a first of 1000 that failed, and fewer now", failed, size)
	}
	t.Logf("writes of %v points got no answer in time; then writes of %d went through", failed, size)

	// Compressed, 1,000 points go at once.
	gz := New(configs.Influx{URL: "http://" + path.Addr(), Bucket: in.Database(), BatchSize: 1000, Timeout: time.Second, Gzip: true}, quiet())
	defer gz.Close()
	more := benchMessages(1000)
	for i := range more {
		more[i].Time = more[i].Time.Add(time.Hour) // points of their own
	}
	b := gz.NewBatch().(*batch)
	for i := range more {
		b.Add(&more[i])
	}
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	io.WriteString(zw, b.body.String())
	zw.Close()
	t.Logf("1,000 points: %d bytes, %d compressed", b.body.Len(), zipped.Len())
	if err := b.Send(ctx); err != nil {
		t.Fatalf("Send of 1,000 points compressed over 100 KiB/s: %v", err)
	}
	if n, err := in.Count(ctx, "power_meter"); err != nil || n != 2000 {
		t.Fatalf("InfluxDB holds %d points (%v), want 2000", n, err)
	}

	path.SetRate(2 << 10) // a hundred points take some 12 s
	failed, err = send(benchMessages(300), 4)
	want := fmt.Sprintf("influx uplink: InfluxDB at http://%s did not take a write of 100 points within 1s (hub.influx.timeout): it hangs or is overloaded, or the link to it is too slow or drops packets", path.Addr())
	if err == nil || err.Error() != want || u.size.Load() != minWrite {
		t.Errorf("Send over 2 KiB/s: writes of %v points failed, writes of %d now, then %v\nwant writes of 100, and %s", failed, u.size.Load(), err, want)
	}
}

func benchMessages(n int) []model.Message {
	msgs := make([]model.Message, n)
	for i := range msgs {
		rs := make([]model.Reading, 8)
		for j := range rs {
			rs[j] = model.Reading{Signal: fmt.Sprintf("signal_%d", j), Value: model.Number(float64(i) + float64(j)*0.37), Unit: "V", Quality: model.Good}
		}
		msgs[i] = model.Message{Station: "pr-0001", StationType: model.PoliceRoom, Device: "meter-main", DeviceKind: "power_meter",
			Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond), Kind: model.KindTelemetry, Readings: rs}
	}
	return msgs
}

// BenchmarkEncode compares our line builder with the client's write.Point
// for a message of 8 readings.
func BenchmarkEncode(b *testing.B) {
	m := benchMessages(1)[0]
	b.Run("AppendLine", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = AppendLine(buf[:0], &m)
		}
	})
	b.Run("write.Point", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			p := write.NewPointWithMeasurement(m.DeviceKind).
				AddTag("station", m.Station).AddTag("station_type", string(m.StationType)).AddTag("device", m.Device).
				AddField("seq", int64(m.Seq)).SetTime(m.Time)
			for i := range m.Readings {
				p.AddField(m.Readings[i].Signal, m.Readings[i].Value.Interface())
			}
			_ = write.PointToLineProtocol(p, time.Nanosecond)
		}
	})
}

// BenchmarkSend writes batches of 500 telemetry points (8 fields each) to a
// real InfluxDB 1.8.
func BenchmarkSend(b *testing.B) {
	ctx := context.Background()
	in, err := hub.StartInflux(ctx, b.TempDir(), quiet())
	if err != nil {
		b.Fatal(err)
	}
	defer in.Stop()
	u := newUplink(b, in, 500)
	msgs := benchMessages(500)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		// New timestamps each round, so that InfluxDB stores new points.
		for i := range msgs {
			msgs[i].Time = t0.Add(time.Duration(n*len(msgs)+i) * time.Millisecond)
		}
		n++
		if err := uplink.SendAll(ctx, u.NewBatch(), msgs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*len(msgs))/b.Elapsed().Seconds(), "points/s")
	b.ReportMetric(float64(n*len(msgs)*8)/b.Elapsed().Seconds(), "fields/s")
}

// BenchmarkGzip is what hub.influx.gzip costs the gateway at a write of
// 500 points of 8 fields: the client compresses each request with
// compress/gzip at its default level, with a writer of its own.
func BenchmarkGzip(b *testing.B) {
	msgs := benchMessages(500)
	var lines []byte
	for i := range msgs {
		lines = append(AppendLine(lines, &msgs[i]), '\n')
	}
	b.SetBytes(int64(len(lines)))
	b.ReportAllocs()
	for b.Loop() {
		zw := gzip.NewWriter(io.Discard)
		zw.Write(lines)
		zw.Close()
	}
}

// The line-protocol examples of docs/hub-contract.md are what AppendLine
// writes for the doc's JSON examples.
func TestContractDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/hub-contract.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, block := range strings.Split(string(doc), "```json\n")[1:] {
		ex := strings.TrimSpace(block[:strings.Index(block, "```")])
		m, err := model.ParseJSON([]byte(ex))
		if err != nil {
			continue // the status payload
		}
		n++
		if line := string(AppendLine(nil, &m)); !strings.Contains(string(doc), "\n"+line+"\n") {
			t.Errorf("the doc does not show the point of %s:\n%s", ex, line)
		}
	}
	if n != 4 {
		t.Errorf("found %d payload examples in the doc, want 4", n)
	}
}

// TestSendRejected: InfluxDB refuses some points of a batch for good (a
// field type conflict, as after a template changed a signal's type). The
// others are written, Send names the refused ones with InfluxDB's reason,
// and the next batch goes through: a permanent rejection is not an outage.
func TestSendRejected(t *testing.T) {
	in := startInflux(t)
	u := newUplink(t, in, 0)
	ctx := context.Background()
	msg := func(i int, v model.Value) model.Message {
		return model.Message{Station: "pr-0001", StationType: model.PoliceRoom, Device: "m-1", DeviceKind: "power_meter",
			Seq: uint64(i), Time: t0.Add(time.Duration(i) * time.Second), Kind: model.KindTelemetry,
			Readings: []model.Reading{{Signal: "status", Value: v, Quality: model.Good}}}
	}
	if err := uplink.SendAll(ctx, u.NewBatch(), []model.Message{msg(0, model.Number(1))}); err != nil {
		t.Fatal(err)
	}
	var batch []model.Message
	for i := 1; i <= 10; i++ {
		v := model.Number(float64(i))
		if i == 3 || i == 8 {
			v = model.String("on") // "status" is a float field already
		}
		batch = append(batch, msg(i, v))
	}
	err := uplink.SendAll(ctx, u.NewBatch(), batch)
	var rej *uplink.Rejected
	if !errors.As(err, &rej) {
		t.Fatalf("Send = %v, want *uplink.Rejected", err)
	}
	if len(rej.Items) != 2 || rej.Items[0].Index != 2 || rej.Items[1].Index != 7 {
		t.Fatalf("rejected %+v, want indexes 2 and 7", rej.Items)
	}
	for _, it := range rej.Items {
		if !strings.Contains(it.Reason, "InfluxDB 400") || !strings.Contains(it.Reason, "field type conflict") {
			t.Errorf("reason %q lacks InfluxDB's status and cause", it.Reason)
		}
		if want := AppendLine(nil, &batch[it.Index]); string(it.Payload) != string(want) {
			t.Errorf("payload of the refused point %q, want its line %q", it.Payload, want)
		}
	}
	if n, err := in.Count(ctx, "power_meter"); err != nil || n != 9 {
		t.Fatalf("points in InfluxDB = %d, %v; want 9 (the first and 8 of the batch)", n, err)
	}
	if err := uplink.SendAll(ctx, u.NewBatch(), []model.Message{msg(11, model.Number(11))}); err != nil {
		t.Fatalf("the next batch: %v", err)
	}
}

// TestSendBeyondRetention: a backlog older than the hub's retention policy
// (a station cut off for longer than InfluxDB keeps data) is refused by
// InfluxDB point by point. The points it keeps are written, the old ones
// are named with InfluxDB's reason, and that takes a few requests, not
// two per point.
func TestSendBeyondRetention(t *testing.T) {
	in := startInflux(t)
	u := newUplink(t, in, 0)
	ctx := context.Background()
	if _, err := in.Query(ctx, `ALTER RETENTION POLICY "autogen" ON "`+in.Database()+`" DURATION 1h SHARD DURATION 1h DEFAULT`); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var batch []model.Message
	for i := range 2000 {
		at := now.Add(time.Duration(i-2000) * time.Millisecond)
		if i < 1300 {
			at = at.Add(-3 * time.Hour) // beyond the retention policy
		}
		batch = append(batch, model.Message{Station: "pr-0001", StationType: model.PoliceRoom, Device: "m-1", DeviceKind: "power_meter",
			Seq: uint64(i + 1), Time: at, Kind: model.KindTelemetry,
			Readings: []model.Reading{{Signal: "voltage", Value: model.Number(230), Quality: model.Good}}})
	}
	before := writeRequests(t, in)
	err := uplink.SendAll(ctx, u.NewBatch(), batch)
	requests := writeRequests(t, in) - before
	var rej *uplink.Rejected
	if !errors.As(err, &rej) {
		t.Fatalf("Send = %v, want *uplink.Rejected", err)
	}
	if len(rej.Items) != 1300 || rej.Items[0].Index != 0 || rej.Items[1299].Index != 1299 {
		t.Fatalf("%d rejected, want the 1,300 old points", len(rej.Items))
	}
	if want := "InfluxDB 400: partial write: points beyond retention policy"; rej.Items[0].Reason != want {
		t.Errorf("reason %q, want %q", rej.Items[0].Reason, want)
	}
	if want := AppendLine(nil, &batch[5]); string(rej.Items[5].Payload) != string(want) {
		t.Errorf("payload %q, want %q", rej.Items[5].Payload, want)
	}
	if n, err := in.Count(ctx, "power_meter"); err != nil || n != 700 {
		t.Fatalf("points in InfluxDB = %d, %v; want the 700 recent ones", n, err)
	}
	t.Logf("%d write requests", requests)
	if requests > 40 {
		t.Errorf("%d write requests for a batch of 2,000 points, 1,300 of them refused; want a few", requests)
	}
}

// writeRequests is how many write requests InfluxDB has served (its
// /debug/vars).
func writeRequests(t *testing.T, in *hub.Influx) int64 {
	t.Helper()
	resp, err := http.Get(in.URL() + "/debug/vars")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var vars map[string]json.RawMessage // each a statistic, or cmdline, memstats
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		t.Fatal(err)
	}
	for _, raw := range vars {
		var v struct {
			Name   string `json:"name"`
			Values struct {
				WriteReq int64 `json:"writeReq"`
			} `json:"values"`
		}
		if json.Unmarshal(raw, &v) == nil && v.Name == "httpd" {
			return v.Values.WriteReq
		}
	}
	t.Fatal("no httpd statistics in InfluxDB's /debug/vars")
	return 0
}

// TestNotInflux: a URL where something else than InfluxDB answers writes
// with 200 OK (a web application's page) stores nothing: a write there
// fails, so that its points stay queued, and the installer's check fails,
// each saying what is at the URL.
func TestNotInflux(t *testing.T) {
	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, "<html><body>Welcome</body></html>")
	}))
	defer page.Close()
	cfg := configs.Influx{URL: page.URL, Bucket: "outpost"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	said := "the server at " + page.URL + " (hub.influx.url) answered a write with 200 OK, where InfluxDB answers 204 No Content: it is not InfluxDB's write API, or something in front of InfluxDB answers for it; nothing was written"
	u := New(cfg, quiet())
	defer u.Close()
	if err := uplink.SendAll(ctx, u.NewBatch(), []model.Message{telemetry()}); err == nil || !strings.HasSuffix(err.Error(), said) {
		t.Errorf("Send = %v\nwant an error ending %q", err, said)
	}
	if err := Check(ctx, cfg); err == nil || err.Error() != said {
		t.Errorf("Check = %v\nwant %q", err, said)
	}
}
