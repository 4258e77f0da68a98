package status

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is the gateway's local status server:
//
//	/            the status page, for a person at the station (phone or laptop)
//	/api/status  the Snapshot as JSON: uplinks, queues, disk, devices
//	/api/devices the devices alone
//	/metrics     Prometheus metrics
//	/healthz     200 while the process serves
//	/readyz      200 while the gateway does its job (queues take writes), 503 and why not
//
// With a token, every path but /healthz wants it: "Authorization: Bearer
// TOKEN", or ?token=TOKEN (the page passes it on).
type Server struct {
	Snapshot func() Snapshot
	// Ready says what keeps the gateway from doing its job; none when it
	// does.
	Ready func() []string
	Token string
	Log   *slog.Logger
	// Metrics are served beside the snapshot's (the delivery histogram).
	Metrics []prometheus.Collector
}

//go:embed page.html
var page []byte

// Handler serves the paths above.
func (s *Server) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{snap: s.Snapshot}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(s.Metrics...)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("GET /readyz", s.auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if why := s.Ready(); len(why) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+strings.Join(why, "; "))
			return
		}
		fmt.Fprintln(w, "ready")
	})))
	mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.Log.Handler(), slog.LevelWarn)})))
	mux.Handle("GET /api/status", s.auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Snapshot())
	})))
	mux.Handle("GET /api/devices", s.auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Snapshot().Devices)
	})))
	mux.Handle("GET /{$}", s.auth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(page)
	})))
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// auth lets a request through when the server has no token or the request
// carries it.
func (s *Server) auth(h http.Handler) http.Handler {
	if s.Token == "" {
		return h
	}
	want := []byte(s.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.URL.Query().Get("token")
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			got = b
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="outpost"`)
			http.Error(w, "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN (status.token_file of the station file)", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Listen binds the server's address; Serve then serves on it.
func Listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("status server: %w (status.listen of the station file; off turns it off)", err)
	}
	return l, nil
}

// Serve serves on l until ctx ends, then stops within a second.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, ErrorLog: slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("status server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if srv.Shutdown(sctx) != nil {
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("status server: %w", err)
	}
	return nil
}
