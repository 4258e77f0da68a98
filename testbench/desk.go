package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/gateway/command"
	"outpost/gateway/model"
	"outpost/gateway/uplink/mqtt"
)

// DeskPlan sends the duty desk's commands to the station during the load:
// Count commands at random moments between From and To after the
// gateway's start (kept clear of the faults), of every sort a duty desk
// may send, valid or not, and some of them again.
type DeskPlan struct {
	Count int           `yaml:"count"`
	From  time.Duration `yaml:"from"`
	To    time.Duration `yaml:"to"`
	// Again is how many commands already answered are sent once more,
	// with the same id: they must be answered again and never act twice.
	Again int `yaml:"again"`
}

// deskCommand is one command the testbench sends, and what must come of
// it.
type deskCommand struct {
	device, payload string
	id              string
	status          model.ResultStatus
	reason          string // the rejection's start
	resultOn        string // the device whose result topic answers
	writes          map[string]int
	lasting         []string // "device/signal" the gateway sets back after lastFor
	sort            string
	sentAt          time.Time
}

// lastFor is how long the lasting actions the testbench sends last.
const lastFor = time.Second

// deskReport is the duty desk part of a report.
type deskReport struct {
	Sent        int            `json:"sent"`
	Again       int            `json:"sent_again"`
	BySort      map[string]int `json:"by_sort"`
	Answered    int            `json:"answered"`
	Wrong       int            `json:"wrong_results"`
	RoundTripMS latency        `json:"round_trip_ms"`
	// Writes are what the simulated devices counted, against what the
	// valid commands ask for.
	Writes       map[string]int `json:"writes"`
	WritesWanted map[string]int `json:"writes_wanted"`
}

// commandSorts builds the commands of a plan for a station: valid ones
// (each action of each device's template, a set of each writable signal)
// and, in turn, expired, malformed, for an unknown device and out of
// range. Lasting actions last one second.
func commandSorts(st *configs.Station, n int, key []byte) ([]deskCommand, error) {
	type target struct {
		dev  string
		tmpl *configs.Template
	}
	var targets []target
	for _, d := range st.Devices {
		t := st.Templates[d.Template]
		if len(t.Actions) > 0 || slices.ContainsFunc(t.Body.Signals(), func(s configs.Signal) bool { return s.Writable }) {
			targets = append(targets, target{d.ID, t})
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("the station has no device that takes commands")
	}
	// The valid commands, round robin over devices and their actions.
	type valid struct {
		dev, action, args string
		writes            map[string]int
		lasting           []string
	}
	var valids []valid
	for _, tg := range targets {
		for _, a := range tg.tmpl.Actions {
			w := map[string]int{}
			args := ""
			var lasting []string
			for _, s := range a.Set {
				w[tg.dev+"/"+s.Signal]++
			}
			if a.For > 0 {
				args = fmt.Sprintf(`{"for":%g}`, lastFor.Seconds())
				for _, s := range a.Set {
					w[tg.dev+"/"+s.Signal]++ // set back by the gateway
					lasting = append(lasting, tg.dev+"/"+s.Signal)
				}
			}
			valids = append(valids, valid{tg.dev, a.Name, args, w, lasting})
		}
		for _, s := range tg.tmpl.Body.Signals() {
			if !s.Writable {
				continue
			}
			v := "true"
			if s.Type == configs.Number {
				v = "1"
				if s.Limits != nil {
					v = fmt.Sprint((s.Limits.Min + s.Limits.Max) / 2)
				}
			}
			valids = append(valids, valid{tg.dev, "set", fmt.Sprintf(`{"signal":%q,"value":%s}`, s.Name, v), map[string]int{tg.dev + "/" + s.Name: 1}, nil})
		}
	}
	var out []deskCommand
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("desk-%04d", len(out)+1)
		v := valids[i%len(valids)]
		c := deskCommand{device: v.dev, id: id, resultOn: v.dev}
		switch i % 10 {
		case 6: // expired: queued in a broker for an hour
			c.sort, c.status, c.reason = "expired", model.ResultRejected, "expired: "
			c.payload = commandJSON(id, v.action, v.args, "{sent-1h}", 30)
		case 7: // malformed: no ts
			c.sort, c.status, c.reason = "malformed", model.ResultRejected, `malformed: missing "ts"`
			c.payload = fmt.Sprintf(`{"v":1,"id":%q,"action":%q}`, id, v.action)
		case 8: // for a device the station does not have
			c.sort, c.status, c.reason, c.resultOn = "unknown-device", model.ResultRejected, "no device no-such-device at station", model.GatewayDevice
			c.device = "no-such-device"
			c.payload = commandJSON(id, v.action, v.args, "{sent}", 30)
		case 9: // out of range, or of the wrong type
			c.sort, c.status = "out-of-range", model.ResultRejected
			sig, val, reason := outOfRange(st, v.dev)
			c.reason = reason
			c.payload = commandJSON(id, "set", fmt.Sprintf(`{"signal":%q,"value":%s}`, sig, val), "{sent}", 30)
		default:
			c.sort, c.status, c.writes, c.lasting = "valid", model.ResultOK, maps.Clone(v.writes), v.lasting
			c.payload = commandJSON(id, v.action, v.args, "{sent}", 30)
		}
		out = append(out, c)
	}
	return out, nil
}

// outOfRange finds a value a device's writable signal refuses: a number
// beyond its limits, or a number for a bool.
func outOfRange(st *configs.Station, dev string) (signal, value, reason string) {
	for _, d := range st.Devices {
		if d.ID != dev {
			continue
		}
		for _, s := range st.Templates[d.Template].Body.Signals() {
			if s.Writable && s.Type == configs.Number && s.Limits != nil {
				return s.Name, fmt.Sprint(s.Limits.Max + 1), fmt.Sprintf("%v is out of range for %s", s.Limits.Max+1, s.Name)
			}
		}
		for _, s := range st.Templates[d.Template].Body.Signals() {
			if s.Writable && s.Type == configs.Bool {
				return s.Name, "2", fmt.Sprintf("%s takes true or false, not 2", s.Name)
			}
		}
	}
	return "none", "1", "no writable signal"
}

// commandJSON writes a command; ts is filled in when it is sent.
func commandJSON(id, action, args, ts string, ttl int) string {
	s := fmt.Sprintf(`{"v":1,"id":%q,"action":%q,"ts":%q,"ttl":%d`, id, action, ts, ttl)
	if args != "" {
		s += `,"args":` + args
	}
	return s + "}"
}

// runDesk sends the plan's commands, and some of them again, as the hub's
// duty desk, at moments clear of the scenario's faults.
func (r *runner) runDesk(ctx context.Context) error {
	p := r.sc.Desk
	if p == nil {
		return nil
	}
	var key []byte
	if f := r.st.Hub.Commands.KeyFile; f != "" {
		k, err := configs.ReadKey(f)
		if err != nil {
			return err
		}
		key = k
	}
	cmds, err := commandSorts(r.st, p.Count, key)
	if err != nil {
		return err
	}
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(r.mqtt.URL()).SetClientID("testbench-duty-desk").
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond))
	if err := connect(ctx, cl); err != nil {
		return err
	}
	defer cl.Disconnect(100)
	moments := r.clearMoments(p.From, p.To, p.Count+p.Again)
	prefix := r.st.Hub.MQTT.TopicPrefix
	send := func(c *deskCommand) error {
		now := time.Now().UTC()
		payload := strings.ReplaceAll(c.payload, "{sent}", now.Format(time.RFC3339Nano))
		payload = strings.ReplaceAll(payload, "{sent-1h}", now.Add(-time.Hour).Format(time.RFC3339Nano))
		b := []byte(payload)
		if key != nil && c.sort != "malformed" && !strings.Contains(payload, `"hmac"`) {
			if b, err = command.Sign(key, r.st.Station.ID, c.device, b); err != nil {
				return err
			}
		}
		c.payload = string(b)
		if c.sentAt.IsZero() {
			c.sentAt = time.Now()
		}
		tok := cl.Publish(mqtt.CommandTopic(prefix, r.st.Station.ID, c.device), 1, false, b)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return fmt.Errorf("command %s not published: %v", c.id, tok.Error())
		}
		return nil
	}
	again := 0
	r.deskResent = map[string]int{}
	lasting := map[string]lastingAt{} // "device/signal" -> the lasting action on it
	resend := map[int]bool{}
	for k := 1; k <= p.Again; k++ {
		resend[k*len(moments)/(p.Again+1)] = true
	}
	for i, at := range moments {
		if err := sleepCtx(ctx, time.Until(r.gwStart.Add(at))); err != nil {
			return err
		}
		// Every few moments one sends an earlier command again: after a
		// restart, one sent before it.
		if resend[i] && len(r.desk) > 0 {
			pool := r.desk
			if restart := r.firstFault(); restart > 0 && at > restart {
				pool = slices.DeleteFunc(slices.Clone(r.desk), func(c deskCommand) bool { return c.sentAt.After(r.gwStart.Add(restart)) })
			}
			prev := pool[r.rng.IntN(len(pool))]
			if err := send(&prev); err != nil {
				return err
			}
			r.deskResent[prev.id]++
			again++
			continue
		}
		if len(r.desk) == len(cmds) {
			continue
		}
		c := cmds[len(r.desk)]
		if err := r.mindLasting(ctx, &c, lasting); err != nil {
			return err
		}
		if err := send(&c); err != nil {
			return err
		}
		r.desk = append(r.desk, c)
		for _, k := range c.lasting {
			lasting[k] = lastingAt{len(r.desk) - 1, c.sentAt.Add(lastFor)}
		}
	}
	r.deskAgain = again
	return nil
}

// firstFault is when the scenario's first fault comes, after the
// gateway's start, or 0.
func (r *runner) firstFault() time.Duration {
	var first time.Duration
	for _, f := range r.sc.Faults {
		if first == 0 || f.At < first {
			first = f.At
		}
	}
	return first
}

// lastingAt is a lasting action the testbench sent (by index in r.desk)
// and when the gateway sets its signals back.
type lastingAt struct {
	cmd  int
	back time.Time
}

// mindLasting keeps a command that sets a signal a lasting action holds
// clear of the moment the gateway sets it back (it waits), so that which
// comes first is certain: a command before it takes the signal over, and
// the setting back does not happen (the writes expected say so).
func (r *runner) mindLasting(ctx context.Context, c *deskCommand, lasting map[string]lastingAt) error {
	const margin = 300 * time.Millisecond
	for k := range c.writes {
		l, ok := lasting[k]
		if !ok {
			continue
		}
		if d := time.Until(l.back); d > -margin && d < margin {
			if err := sleepCtx(ctx, d+margin); err != nil {
				return err
			}
		}
		if time.Now().Before(l.back) {
			r.desk[l.cmd].writes[k]-- // taken over: not set back
		}
		delete(lasting, k)
	}
	return nil
}

// clearMoments spreads n moments at random between from and to after the
// gateway's start, none from 3 s before a fault until 4 s after the
// devices hear again (a gateway killed while a device carries out a
// command cannot say whether it acted; a deaf device fails it).
func (r *runner) clearMoments(from, to time.Duration, n int) []time.Duration {
	after := r.quiet() + 4*time.Second
	var faults []time.Duration
	for _, f := range r.sc.Faults {
		for i := 0; i < max(f.Times, 1); i++ {
			faults = append(faults, f.At+time.Duration(i)*f.Every)
		}
	}
	var out []time.Duration
	for len(out) < n {
		at := from + time.Duration(r.rng.Int64N(int64(max(to-from, 1))))
		if !slices.ContainsFunc(faults, func(f time.Duration) bool { return at > f-3*time.Second && at < f+after }) {
			out = append(out, at)
		}
	}
	slices.Sort(out)
	return out
}

// checkDesk holds the results that reached the hub and the writes the
// simulated devices counted to what the commands asked for.
func (r *runner) checkDesk(stats simStats) {
	if r.sc.Desk == nil {
		return
	}
	_, results, err := r.alarmArrivals()
	if err != nil {
		r.fail("alarm watcher: %v", err)
		return
	}
	rep := &deskReport{Sent: len(r.desk), Again: r.deskAgain, BySort: map[string]int{}, Writes: map[string]int{}, WritesWanted: map[string]int{}}
	byID := map[string][]resultArrival{}
	for _, a := range results {
		byID[a.Result.ID] = append(byID[a.Result.ID], a)
	}
	var trips []time.Duration
	for _, c := range r.desk {
		rep.BySort[c.sort]++
		for k, n := range c.writes {
			rep.WritesWanted[k] += n
		}
		got := byID[c.id]
		if len(got) == 0 {
			r.fail("command %s (%s): no result", c.id, c.sort)
			continue
		}
		rep.Answered++
		first := got[0]
		trips = append(trips, first.At.Sub(c.sentAt))
		if first.Device != c.resultOn || first.Result.Status != c.status || !strings.HasPrefix(first.Result.Reason, c.reason) {
			rep.Wrong++
			r.fail("command %s (%s): result on %s %s %q, want on %s %s %q…", c.id, c.sort, first.Device, first.Result.Status, first.Result.Reason, c.resultOn, c.status, c.reason)
		}
		if want := 1 + r.deskResent[c.id]; len(got) != want {
			r.fail("command %s (%s) sent %d times: answered %d times", c.id, c.sort, want, len(got))
		}
		for _, g := range got[1:] {
			if g.Result != first.Result {
				r.fail("command %s sent again: answered %+v, first %+v", c.id, g.Result, first.Result)
			}
		}
	}
	rep.RoundTripMS = latencyOf(trips)
	for dev, ds := range stats.Devices {
		for sig, n := range ds.Writes {
			rep.Writes[dev+"/"+sig] = n
		}
	}
	for k, want := range rep.WritesWanted {
		if rep.Writes[k] != want {
			r.fail("writes of %s: the device counted %d, the commands asked for %d", k, rep.Writes[k], want)
		}
	}
	for k, n := range rep.Writes {
		if _, asked := rep.WritesWanted[k]; !asked {
			r.fail("writes of %s: the device counted %d, no command asked for any", k, n)
		}
	}
	r.report.Desk = rep
}
