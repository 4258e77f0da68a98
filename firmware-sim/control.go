package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"outpost/firmware-sim/sim"
)

// serveControl serves the control API on the -control address until ctx
// ends, and returns the address it listens on:
//
//	GET  /devices                      every device and the actions it takes
//	POST /devices/{id}/{action}?k=v&…  make a device act; 200 once done
//	POST /devices/{id}/silence         the device answers nothing, as if switched off
//	POST /devices/{id}/answer          it answers again
//	POST /devices/{id}/flaky?share=0.3 it loses or damages that share of its answers (Modbus)
//	POST /deaf                         every device answers nothing, like one whose cable was pulled
//	POST /hear                         they answer again
//
// The testbench makes the devices deaf around a gateway crash, so that
// nothing it counts as served is left unread. Each request is done when
// it is answered, so that deaf and hear keep their order (signals, used
// before, did not: a deaf right after a hear was handled first).
//
// An action that fails answers 400 (a bad request: the text says what was
// expected) or 404 (no such device), with the error as the body.
func (s *station) serveControl(ctx context.Context, wg *sync.WaitGroup) (string, error) {
	host, _, err := net.SplitHostPort(s.opts.control)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return "", fmt.Errorf("-control %s: want a loopback host:port, e.g. 127.0.0.1:0", s.opts.control)
	}
	ln, err := net.Listen("tcp", s.opts.control)
	if err != nil {
		return "", fmt.Errorf("-control: %w", err)
	}
	actors := map[string]sim.Actor{}
	for _, l := range s.links {
		for _, d := range l.Devices() {
			if a, ok := d.(sim.Actor); ok {
				actors[d.ID()] = a
			}
		}
	}
	all := map[string]bool{}
	for _, l := range s.links {
		for _, d := range l.Devices() {
			all[d.ID()] = true
		}
	}
	mux := http.NewServeMux()
	for _, action := range []string{"silence", "answer", "flaky", "slow"} {
		mux.HandleFunc("POST /devices/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			id := r.PathValue("id")
			if !all[id] {
				http.Error(w, fmt.Sprintf("no device %s (have %v)", id, slices.Sorted(maps.Keys(all))), http.StatusNotFound)
				return
			}
			switch action {
			case "flaky":
				share, err := strconv.ParseFloat(r.URL.Query().Get("share"), 64)
				if err != nil || share < 0 || share > 1 {
					http.Error(w, fmt.Sprintf("flaky: share=%q: want the share of answers lost or damaged, 0 to 1", r.URL.Query().Get("share")), http.StatusBadRequest)
					return
				}
				s.faults.SetFlaky(id, share)
				s.log.Info("device", "id", id, "flaky", share)
			case "slow":
				delay, err := time.ParseDuration(r.URL.Query().Get("delay"))
				if err != nil || delay < 0 {
					http.Error(w, fmt.Sprintf("slow: delay=%q: want how late the device answers, e.g. 300ms (0s: on time)", r.URL.Query().Get("delay")), http.StatusBadRequest)
					return
				}
				s.faults.SetSlow(id, delay)
				s.log.Info("device", "id", id, "slow", delay)
			default:
				s.faults.SetSilent(id, action == "silence")
				s.log.Info("device", "id", id, "silent", action == "silence")
			}
			fmt.Fprintln(w, "ok")
		})
	}
	// actions lists what a device takes, as "name [args] (what it does)".
	actions := func(id string) []string {
		acts := []string{"silence", "answer", "flaky share=0.3", "slow delay=300ms"}
		if a := actors[id]; a != nil {
			acts = append(acts, a.Actions()...)
		}
		return acts
	}
	for path, deaf := range map[string]bool{"/deaf": true, "/hear": false} {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			s.deaf.Store(deaf)
			s.log.Info("devices", "deaf", deaf)
			fmt.Fprintln(w, "ok")
		})
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "firmware-sim control API:\n  GET  /devices                   every device and the actions it takes\n  POST /devices/{id}/{action}?k=v make a device act (e.g. /devices/th-1/silence)\n  POST /deaf, POST /hear          every device answers nothing, or again")
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		for _, id := range slices.Sorted(maps.Keys(all)) {
			fmt.Fprintf(w, "%s: %s\n", id, strings.Join(actions(id), "; "))
		}
	})
	mux.HandleFunc("POST /devices/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		id, action := r.PathValue("id"), r.PathValue("action")
		if !all[id] {
			http.Error(w, fmt.Sprintf("no device %s (have %v)", id, slices.Sorted(maps.Keys(all))), http.StatusNotFound)
			return
		}
		acts := actions(id)
		if !slices.ContainsFunc(acts, func(a string) bool { return strings.Fields(a)[0] == action }) {
			http.Error(w, fmt.Sprintf("%s takes no action %q (it takes: %s)", id, action, strings.Join(acts, "; ")), http.StatusBadRequest)
			return
		}
		a := actors[id]
		args := map[string]string{}
		for k, v := range r.URL.Query() {
			args[k] = v[len(v)-1]
		}
		if err := a.Act(r.Context(), action, args); err != nil {
			http.Error(w, fmt.Sprintf("%s %s: %v", id, action, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("control server", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	s.log.Info("control up", "address", ln.Addr().String())
	return ln.Addr().String(), nil
}
