package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// InfluxEnv names the environment variable that may point at an influxd
// 1.8 binary; without it Influx looks in $HOME/.cache/outpost/bin.
const InfluxEnv = "OUTPOST_INFLUXD"

// DefaultDatabase is the database StartInflux creates.
const DefaultDatabase = "outpost"

// Influx is a running InfluxDB 1.8 server on loopback ports.
type Influx struct {
	port int
	http *http.Client
	p    proc
}

// InfluxPath returns the influxd binary the harness runs, or an error
// telling how to install it.
func InfluxPath() (string, error) {
	path := os.Getenv(InfluxEnv)
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("hub: find influxd: %w", err)
		}
		path = filepath.Join(home, ".cache", "outpost", "bin", "influxd")
	}
	if st, err := os.Stat(path); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("hub: no influxd 1.8 binary at %s (run `make test-deps`, or set $%s)", path, InfluxEnv)
	}
	return path, nil
}

// StartInflux writes an InfluxDB 1.8 config into dir (which must exist):
// usage reporting off, Flux off, HTTP and the backup/restore RPC service on
// free loopback ports, data, meta and WAL under dir. It starts influxd,
// waits for /ping and creates DefaultDatabase.
func StartInflux(ctx context.Context, dir string, log *slog.Logger) (*Influx, error) {
	path, err := InfluxPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	return onFreePorts(log, "influxd", func(int) (*Influx, error) { return startInflux(ctx, dir, log, path) })
}

// startInflux starts the server on ports it finds free.
func startInflux(ctx context.Context, dir string, log *slog.Logger, path string) (*Influx, error) {
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	port, rpc := ports[0], ports[1]
	conf := filepath.Join(dir, "influxdb.conf")
	text := fmt.Sprintf(`# written by the outpost test hub
reporting-disabled = true
bind-address = "127.0.0.1:%d"

[meta]
  dir = %q

[data]
  dir = %q
  wal-dir = %q
  wal-fsync-delay = "0s"
  query-log-enabled = false

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:%d"
  auth-enabled = false
  log-enabled = false
  flux-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
`, rpc, filepath.Join(dir, "meta"), filepath.Join(dir, "data"), filepath.Join(dir, "wal"), port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("hub: influxdb config: %w", err)
	}
	in := &Influx{port: port, http: &http.Client{Timeout: 10 * time.Second}, p: proc{
		name: "influxd", log: log, path: path,
		args: []string{"run", "-config", conf}, logf: filepath.Join(dir, "influxd.log"),
	}}
	if err := in.Restart(ctx); err != nil {
		return nil, err
	}
	if _, err := in.Query(ctx, "CREATE DATABASE "+strconv.Quote(DefaultDatabase)); err != nil {
		in.Kill()
		return nil, err
	}
	return in, nil
}

// URL is the server's HTTP address: http://127.0.0.1:PORT.
func (in *Influx) URL() string {
	return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(in.port))
}

// Database is the database StartInflux created; as a 2.x bucket it is the
// bucket name.
func (in *Influx) Database() string { return DefaultDatabase }

// Restart starts the server again with the same ports and data (stopping
// it first if it runs) and waits until it answers /ping.
func (in *Influx) Restart(ctx context.Context) error { return in.p.restart(ctx, in.ping) }

func (in *Influx) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.URL()+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := in.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

// Kill ends the server with SIGKILL.
func (in *Influx) Kill() { in.p.kill() }

// Freeze stops the server (SIGSTOP) without closing anything: it hangs, as
// a server on a wedged machine does; writes wait for an answer that does
// not come. Thaw resumes it.
func (in *Influx) Freeze() { in.p.send(syscall.SIGSTOP) }

// Thaw resumes a frozen server.
func (in *Influx) Thaw() { in.p.send(syscall.SIGCONT) }

// Stop ends the server gracefully. Stopping a stopped server does nothing.
func (in *Influx) Stop() { in.p.stop() }

// Pid is the server's process id, or 0 when it is not running.
func (in *Influx) Pid() int { return in.p.pid() }

// Series is one series of a query result. Values holds the rows in column
// order; numbers are json.Number (exact), times are integer nanoseconds.
type Series struct {
	Name    string            `json:"name"`
	Tags    map[string]string `json:"tags"`
	Columns []string          `json:"columns"`
	Values  [][]any           `json:"values"`
}

// Rows returns the rows as maps from column name to value, dropping null
// columns, which makes assertions on sparse points readable.
func (s Series) Rows() []map[string]any {
	rows := make([]map[string]any, len(s.Values))
	for i, v := range s.Values {
		row := make(map[string]any, len(v))
		for j, c := range s.Columns {
			if j < len(v) && v[j] != nil {
				row[c] = v[j]
			}
		}
		rows[i] = row
	}
	return rows
}

// Query runs InfluxQL statements against Database (POST /query, epoch=ns)
// and returns the series of all results, in order. A statement error is
// returned as an error.
func (in *Influx) Query(ctx context.Context, influxql string) ([]Series, error) {
	form := url.Values{"q": {influxql}, "db": {DefaultDatabase}, "epoch": {"ns"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.URL()+"/query", bytes.NewBufferString(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("hub: influx query: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := in.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: influx query %q: %w", influxql, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("hub: influx query %q: %w", influxql, err)
	}
	var out struct {
		Results []struct {
			Series []Series `json:"series"`
			Error  string   `json:"error"`
		} `json:"results"`
		Error string `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		return nil, fmt.Errorf("hub: influx query %q: %s: %w", influxql, resp.Status, err)
	}
	if out.Error != "" {
		return nil, fmt.Errorf("hub: influx query %q: %s", influxql, out.Error)
	}
	var series []Series
	var errs []error
	for _, r := range out.Results {
		if r.Error != "" {
			errs = append(errs, errors.New(r.Error))
		}
		series = append(series, r.Series...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("hub: influx query %q: %w", influxql, err)
	}
	return series, nil
}

// Count returns the number of points of measurement (the count of its seq
// field, which every point of the hub contract has), or 0 when there are
// none.
func (in *Influx) Count(ctx context.Context, measurement string) (int64, error) {
	series, err := in.Query(ctx, fmt.Sprintf(`SELECT count("seq") FROM %q`, measurement))
	if err != nil {
		return 0, err
	}
	if len(series) == 0 || len(series[0].Values) == 0 || len(series[0].Values[0]) < 2 {
		return 0, nil
	}
	n, ok := series[0].Values[0][1].(json.Number)
	if !ok {
		return 0, fmt.Errorf("hub: count of %s: unexpected value %v", measurement, series[0].Values[0][1])
	}
	return n.Int64()
}

// Write writes points in line protocol to Database (POST /write, ns
// precision).
func (in *Influx) Write(ctx context.Context, lines string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.URL()+"/write?db="+DefaultDatabase, bytes.NewBufferString(lines))
	if err != nil {
		return fmt.Errorf("hub: influx write: %w", err)
	}
	resp, err := in.http.Do(req)
	if err != nil {
		return fmt.Errorf("hub: influx write: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("hub: influx write: %s: %s", resp.Status, body)
	}
	return nil
}
