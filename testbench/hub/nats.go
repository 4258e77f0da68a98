package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// NATSPath is where the Debian package installs the NATS server.
const NATSPath = "/usr/sbin/nats-server"

// NATSCluster is a running cluster of NATS servers on loopback ports, each
// with an MQTT listener, JetStream on and its store in a directory of its
// own: a clustered hub broker. NATS server (2.9 in Debian) speaks MQTT
// 3.1.1 on top of JetStream, and its nodes replicate the JetStream
// streams that hold the MQTT sessions, QoS 1 messages and retained
// messages, so that a client that loses its node finds its session and
// its messages on another. It takes QoS 0 and 1 (no QoS 2), retained
// messages, wills and persistent sessions; topics must not contain '.'
// or ' '.
type NATSCluster struct {
	dir   string
	log   *slog.Logger
	nodes []*natsNode
}

type natsNode struct {
	name                        string
	client, cluster, mqtt, http int
	p                           proc
}

// natsReplicas is how many copies of the MQTT streams and consumers the
// cluster keeps: every node's, up to three (JetStream's largest useful
// replication).
func natsReplicas(nodes int) int { return min(nodes, 3) }

// StartNATSCluster writes the configuration of nodes NATS servers into
// dir (node i's store under dir/nI) and starts them on free loopback
// ports: one cluster, JetStream on, MQTT streams and consumers replicated
// on every node (up to three), anonymous access. It returns once every
// node has contact with a JetStream meta leader and is current with it,
// and takes an MQTT connection. A port found free can be taken by another
// process before its node listens on it (tests run side by side): then
// the cluster starts again on other ports, its stores under dir/tryN, up
// to three times.
func StartNATSCluster(ctx context.Context, dir string, log *slog.Logger, nodes int) (*NATSCluster, error) {
	if nodes < 1 || nodes > 9 {
		return nil, fmt.Errorf("hub: a NATS cluster of %d nodes (1 to 9)", nodes)
	}
	if _, err := exec.LookPath(NATSPath); err != nil {
		return nil, fmt.Errorf("hub: nats-server not found at %s (run `make test-deps`): %w", NATSPath, err)
	}
	return onFreePorts(log, "nats cluster", func(try int) (*NATSCluster, error) {
		d := dir
		if try > 1 {
			d = filepath.Join(dir, fmt.Sprintf("try%d", try))
		}
		return startNATSCluster(ctx, d, log, nodes)
	})
}

func startNATSCluster(ctx context.Context, dir string, log *slog.Logger, nodes int) (*NATSCluster, error) {
	c := &NATSCluster{dir: dir, log: log}
	ports, err := FreePorts(4 * nodes)
	if err != nil {
		return nil, err
	}
	for i := range nodes {
		p := ports[4*i:]
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("n%d", i+1), client: p[0], cluster: p[1], mqtt: p[2], http: p[3]})
	}
	var routes []string
	for _, n := range c.nodes {
		routes = append(routes, "nats-route://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(n.cluster)))
	}
	for _, n := range c.nodes {
		ndir := filepath.Join(dir, n.name)
		if err := os.MkdirAll(ndir, 0o755); err != nil {
			return nil, fmt.Errorf("hub: %w", err)
		}
		// ack_wait: a QoS 1 message delivered to a subscriber whose node
		// died before its PUBACK arrived goes out again after this long.
		text := fmt.Sprintf(`# written by the outpost test hub
server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
logtime: true
jetstream {
  store_dir: %q
}
cluster {
  name: outpost-hub
  listen: 127.0.0.1:%d
  routes: [%s]
}
mqtt {
  listen: 127.0.0.1:%d
  stream_replicas: %d
  consumer_replicas: %d
  ack_wait: "2s"
}
`, n.name, n.client, n.http, filepath.Join(ndir, "jetstream"), n.cluster, strings.Join(routes, ", "),
			n.mqtt, natsReplicas(nodes), natsReplicas(nodes))
		conf := filepath.Join(ndir, "nats.conf")
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("hub: nats config: %w", err)
		}
		n.p = proc{name: "nats-server " + n.name, log: log, path: NATSPath,
			args: []string{"-c", conf}, logf: filepath.Join(ndir, "nats.log")}
	}
	// All at once: a node finds its meta leader only with the others up.
	for i, n := range c.nodes {
		if err := n.p.start(); err != nil {
			c.Stop()
			return nil, err
		}
		c.log.Debug("hub: nats node started", "node", n.name, "mqtt", c.MQTTURLs()[i])
	}
	for i := range c.nodes {
		if err := c.waitReady(ctx, i, "/healthz"); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// Nodes is the number of nodes.
func (c *NATSCluster) Nodes() int { return len(c.nodes) }

// MQTTURLs are the nodes' MQTT listeners, tcp://127.0.0.1:PORT, in node
// order.
func (c *NATSCluster) MQTTURLs() []string {
	out := make([]string, len(c.nodes))
	for i := range c.nodes {
		out[i] = c.MQTTURL(i)
	}
	return out
}

// MQTTURL is node i's MQTT listener.
func (c *NATSCluster) MQTTURL(i int) string {
	return "tcp://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.nodes[i].mqtt))
}

// Node says which node listens for MQTT at url, or -1.
func (c *NATSCluster) Node(url string) int {
	for i := range c.nodes {
		if c.MQTTURL(i) == url {
			return i
		}
	}
	return -1
}

// Kill ends node i with SIGKILL, like a crash: its connections drop
// without a goodbye.
func (c *NATSCluster) Kill(i int) { c.nodes[i].p.kill() }

// Restart starts node i again on its ports and store (stopping it first
// if it runs), and waits until it is back in the cluster: in contact with
// the JetStream meta leader and current with it, and taking MQTT
// connections. Its copies of the streams may still be catching up (under
// load, for a while): CaughtUp says when they are.
func (c *NATSCluster) Restart(ctx context.Context, i int) error {
	n := c.nodes[i]
	n.p.stop()
	if err := n.p.start(); err != nil {
		return err
	}
	if err := c.waitReady(ctx, i, "/healthz?js-server-only=true"); err != nil {
		n.p.kill()
		return err
	}
	return nil
}

// Pid is node i's process id; 0 while it is down.
func (c *NATSCluster) Pid(i int) int { return c.nodes[i].p.pid() }

// Stop ends every node gracefully. Stopping a stopped cluster does
// nothing.
func (c *NATSCluster) Stop() {
	for _, n := range c.nodes {
		n.p.stop()
	}
}

// Routes is how many other nodes node i has a route to, as its
// monitoring endpoint says.
func (c *NATSCluster) Routes(ctx context.Context, i int) (int, error) {
	var r struct {
		NumRoutes int `json:"num_routes"`
	}
	err := c.get(ctx, i, "/routez", &r)
	return r.NumRoutes, err
}

// MetaLeader is the JetStream meta leader as node i sees it ("" for none).
func (c *NATSCluster) MetaLeader(ctx context.Context, i int) (string, error) {
	var j struct {
		Meta *struct {
			Leader string `json:"leader"`
		} `json:"meta_cluster"`
	}
	if err := c.get(ctx, i, "/jsz", &j); err != nil {
		return "", err
	}
	if j.Meta == nil {
		return "", nil
	}
	return j.Meta.Leader, nil
}

// CaughtUp says whether node i is current with the JetStream meta leader
// and with every stream and consumer it holds a copy of (its /healthz),
// and if not, why.
func (c *NATSCluster) CaughtUp(ctx context.Context, i int) error {
	return c.healthz(ctx, i, "/healthz")
}

// healthz asks node i's health endpoint path (/healthz with options).
func (c *NATSCluster) healthz(ctx context.Context, i int, path string) error {
	var h struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if err := c.get(ctx, i, path, &h); err != nil {
		return err
	}
	if h.Status != "ok" {
		return fmt.Errorf("healthz: %s: %s", h.Status, h.Error)
	}
	return nil
}

// waitReady polls node i until its health check at path passes (at
// least: a meta leader, and the node current with it) and a paho client
// connects to its MQTT listener; the first MQTT connection to the
// cluster also has it create the MQTT streams. It gives up when another
// node has exited, without which node i cannot be ready.
func (c *NATSCluster) waitReady(ctx context.Context, i int, path string) error {
	return c.nodes[i].p.waitReady(ctx, func(ctx context.Context) error {
		for _, n := range c.nodes {
			if n.p.exited() {
				return fmt.Errorf("%w: %s exited: %s", errGiveUp, n.p.name, n.p.tail())
			}
		}
		if err := c.healthz(ctx, i, path); err != nil {
			return err
		}
		return c.mqttConnect(ctx, i)
	})
}

// get fetches a monitoring endpoint of node i and decodes its JSON.
func (c *NATSCluster) get(ctx context.Context, i int, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(c.nodes[i].http)) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	return nil
}

// readyClients numbers the readiness probes' MQTT client ids.
var readyClients atomic.Int64

// mqttConnect connects a paho client (clean session) to node i's MQTT
// listener and disconnects. Each try has a client id of its own and
// waits up to 10 s: NATS may take seconds to create its MQTT streams or
// to save a session on a loaded machine, and a try that gave up sooner
// and came again with the same id would have NATS replace the first
// connection, count the id as flapping and close every further try with
// it for a second, over and over.
func (c *NATSCluster) mqttConnect(ctx context.Context, i int) error {
	id := fmt.Sprintf("outpost-hub-ready-%s-%d", c.nodes[i].name, readyClients.Add(1))
	o := paho.NewClientOptions().AddBroker(c.MQTTURL(i)).SetClientID(id).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetProtocolVersion(4) // not 3 after a refusal: NATS speaks 3.1.1 only
	cl := paho.NewClient(o)
	tok := cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqtt connect: %w", err)
	}
	cl.Disconnect(0)
	return nil
}
