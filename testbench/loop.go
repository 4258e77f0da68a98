package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/gateway/model"
	"outpost/gateway/uplink/mqtt"
)

// LoopPlan is the city brain's side of 民声一键办 (docs/kiosks.md): each
// service_request that reaches the hub is answered with its statuses in
// turn, each a request_status command to its kiosk, Gap apart. Every
// status must reach the kiosk once and in order, every command's result
// be ok, and every request's loop close (its last status shown) before
// the load ends.
type LoopPlan struct {
	// Statuses are sent in this order; received, dispatched, on_scene,
	// closed by default.
	Statuses []string `yaml:"statuses"`
	// Gap is the time between two statuses of a request.
	Gap time.Duration `yaml:"gap"`
	// TTL is each command's time to live: long enough for a kiosk away to
	// come back.
	TTL time.Duration `yaml:"ttl"`
	// Dispatched is the status whose round trip, from the citizen's
	// request at the kiosk to the status on its screen, the report gives;
	// dispatched by default.
	Dispatched string `yaml:"dispatched"`
}

// loopReport is the 民声一键办 part of a report.
type loopReport struct {
	Requests int `json:"requests"`
	// AtHub counts the requests that reached the hub, once each.
	AtHub       int `json:"at_hub"`
	StatusesOut int `json:"statuses_sent"`
	// StatusesShown counts the statuses the kiosks showed; Repeated those
	// a kiosk showed twice, OutOfOrder the requests whose statuses came
	// in another order than sent.
	StatusesShown int `json:"statuses_shown"`
	Repeated      int `json:"repeated"`
	OutOfOrder    int `json:"out_of_order"`
	// ResultsOK counts the commands whose result at the hub was ok.
	ResultsOK int `json:"results_ok"`
	// Unclosed counts the requests whose last status the kiosk never
	// showed.
	Unclosed int `json:"unclosed"`
	// RoundTripMS is from the request at the kiosk to the Dispatched
	// status on its screen.
	RoundTripMS latency `json:"round_trip_ms"`
}

// loopRequest is a request the city brain answers.
type loopRequest struct {
	device, ticket string
	atHub          time.Time
	sent           []string // command ids, in the order of the statuses
}

// cityBrain answers the kiosks' requests during the load.
type cityBrain struct {
	plan *LoopPlan
	cl   paho.Client
	mu   sync.Mutex
	reqs map[string]*loopRequest // by ticket
	seen map[string]bool         // message ids of the requests
	wg   sync.WaitGroup
	errs []error
}

func (p *LoopPlan) statuses() []string {
	if len(p.Statuses) == 0 {
		return []string{"received", "dispatched", "on_scene", "closed"}
	}
	return p.Statuses
}

// statusesFile is where firmware-sim logs the statuses kiosks showed.
func (r *runner) statusesFile() string { return filepath.Join(r.work, "statuses.jsonl") }

// startLoop subscribes the city brain to the station's requests.
func (r *runner) startLoop(ctx context.Context) error {
	p := r.sc.Loop
	if p == nil {
		return nil
	}
	if p.TTL == 0 {
		p.TTL = 10 * time.Minute
	}
	b := &cityBrain{plan: p, reqs: map[string]*loopRequest{}, seen: map[string]bool{}}
	prefix, station := r.st.Hub.MQTT.TopicPrefix, r.st.Station.ID
	b.cl = paho.NewClient(paho.NewClientOptions().AddBroker(r.mqtt.URL()).SetClientID("testbench-city-brain").
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).
		SetOrderMatters(false))
	if err := connect(ctx, b.cl); err != nil {
		return err
	}
	handle := func(_ paho.Client, msg paho.Message) {
		m, err := model.ParseJSON(msg.Payload())
		if err != nil || m.Kind != model.KindEvent || m.Event.Kind != "service_request" {
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.seen[m.ID()] {
			return
		}
		b.seen[m.ID()] = true
		req := &loopRequest{device: m.Device, ticket: m.Event.Details["ticket"], atHub: time.Now()}
		b.reqs[req.ticket] = req
		b.wg.Go(func() { b.answer(ctx, prefix, station, req) })
	}
	tok := b.cl.Subscribe(prefix+"/"+station+"/+/event", 1, handle)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil || !granted(tok.(*paho.SubscribeToken).Result()) {
		return fmt.Errorf("city brain: subscribe: %v (granted %v)", tok.Error(), tok.(*paho.SubscribeToken).Result())
	}
	r.brain = b
	return nil
}

// answer sends a request's statuses, Gap apart.
func (b *cityBrain) answer(ctx context.Context, prefix, station string, req *loopRequest) {
	for i, st := range b.plan.statuses() {
		if i > 0 && sleepCtx(ctx, b.plan.Gap) != nil {
			return
		}
		id := fmt.Sprintf("loop-%s-%d", req.ticket, i)
		args, _ := json.Marshal(map[string]string{"ticket": req.ticket, "status": st, "note": "status " + st + " from the city brain"})
		payload := fmt.Sprintf(`{"v":1,"id":%q,"action":"request_status","args":%s,"ts":%q,"ttl":%d}`,
			id, args, time.Now().UTC().Format(time.RFC3339Nano), int(b.plan.TTL.Seconds()))
		tok := b.cl.Publish(mqtt.CommandTopic(prefix, station, req.device), 1, false, payload)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.mu.Lock()
			b.errs = append(b.errs, fmt.Errorf("city brain: command %s not published: %v", id, tok.Error()))
			b.mu.Unlock()
			return
		}
		b.mu.Lock()
		req.sent = append(req.sent, id)
		b.mu.Unlock()
	}
}

// stop waits for the statuses on their way and disconnects.
func (b *cityBrain) stop() {
	b.wg.Wait()
	b.cl.Disconnect(100)
}

// shown is a line of firmware-sim's -statuses log.
type shown struct {
	Device string    `json:"device"`
	Ticket string    `json:"ticket"`
	Status string    `json:"status"`
	ID     string    `json:"id"`
	At     time.Time `json:"at"`
}

// checkLoop holds the loop to the plan: every request at the hub once,
// every status shown once and in order, every result ok, every loop
// closed; and gives the round trip to the dispatched status.
func (r *runner) checkLoop() error {
	b := r.brain
	if b == nil {
		return nil
	}
	b.stop()
	rep := &loopReport{}
	r.report.Loop = rep
	for _, err := range b.errs {
		r.fail("%v", err)
	}
	all, err := readRaised(r.raisedFile())
	if err != nil {
		return err
	}
	// The k-th request a kiosk raised is its k-th at the hub.
	var asked []raised
	for _, a := range all {
		if a.Kind == "service_request" {
			asked = append(asked, a)
		}
	}
	rep.Requests = len(asked)
	rep.AtHub = len(b.reqs)
	if rep.AtHub != rep.Requests {
		r.fail("loop: %d requests raised, %d reached the hub", rep.Requests, rep.AtHub)
	}
	shownAll, err := readJSONLines[shown](r.statusesFile())
	if err != nil {
		return err
	}
	byTicket := map[string][]shown{}
	for _, s := range shownAll {
		byTicket[s.Ticket] = append(byTicket[s.Ticket], s)
	}
	_, results, err := r.alarmArrivals()
	if err != nil {
		return err
	}
	ok := map[string]bool{}
	for _, res := range results {
		if res.Result.Status == model.ResultOK {
			ok[res.Result.ID] = true
		}
	}
	want := b.plan.statuses()
	dispatched := b.plan.Dispatched
	if dispatched == "" {
		dispatched = "dispatched"
	}
	// When each kiosk raised its requests, in order, for the round trip.
	raisedAt := map[string][]time.Time{}
	for _, a := range asked {
		raisedAt[a.Device] = append(raisedAt[a.Device], a.At)
	}
	nth := map[string]int{}
	reqs := make([]*loopRequest, 0, len(b.reqs))
	for _, q := range b.reqs {
		reqs = append(reqs, q)
	}
	slices.SortFunc(reqs, func(a, c *loopRequest) int { return a.atHub.Compare(c.atHub) })
	var trips []time.Duration
	for _, q := range reqs {
		rep.StatusesOut += len(q.sent)
		for _, id := range q.sent {
			if ok[id] {
				rep.ResultsOK++
			}
		}
		got := byTicket[q.ticket]
		rep.StatusesShown += len(got)
		var order []string
		for _, s := range got {
			order = append(order, s.Status)
		}
		switch {
		case len(order) > len(want):
			rep.Repeated += len(order) - len(want)
			r.fail("loop: %s showed %v, more than once", q.ticket, order)
		case !slices.Equal(order, want[:len(order)]):
			rep.OutOfOrder++
			r.fail("loop: %s showed %v, want in the order %v", q.ticket, order, want)
		}
		if len(order) < len(want) || order[len(order)-1] != want[len(want)-1] {
			rep.Unclosed++
		}
		k := nth[q.device]
		nth[q.device]++
		if k < len(raisedAt[q.device]) {
			for _, s := range got {
				if s.Status == dispatched {
					trips = append(trips, s.At.Sub(raisedAt[q.device][k]))
					break
				}
			}
		}
	}
	rep.RoundTripMS = latencyOf(trips)
	if rep.Unclosed > 0 {
		r.fail("loop: %d of %d requests never closed on their kiosk", rep.Unclosed, rep.AtHub)
	}
	if rep.ResultsOK != rep.StatusesOut {
		r.fail("loop: %d of %d statuses sent got an ok result at the hub", rep.ResultsOK, rep.StatusesOut)
	}
	return nil
}
