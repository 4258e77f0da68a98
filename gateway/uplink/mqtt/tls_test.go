package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/uplink"
	"outpost/testbench/hub"
)

// pki writes a CA, a broker certificate for 127.0.0.1 and a client
// certificate, all signed by the CA, as PEM files in dir.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir, name string) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := pki{ca: filepath.Join(dir, name+"-ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, name+"-"+cn+".pem"), filepath.Join(dir, name+"-"+cn+"-key.pem")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.serverCert, p.serverKey = issue(2, "broker", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = issue(3, "pr-0001", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTLS sends over a TLS listener that requires a client certificate:
// with the station's CA, certificate and key the messages arrive exactly;
// without a client certificate, or trusting another CA, the uplink never
// connects and Send fails.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	good, other := newPKI(t, dir, "hub"), newPKI(t, dir, "other")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := hub.StartMosquittoTLS(ctx, filepath.Join(dir, "broker"), quiet(), hub.TLSFiles{CA: good.ca, Cert: good.serverCert, Key: good.serverKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/pr-0001/+/telemetry")

	u := New(configs.MQTT{URL: b.TLSURL(), TLS: &configs.TLS{CA: good.ca, Cert: good.clientCert, Key: good.clientKey}}, station, quiet())
	if err := u.Connect(ctx); err != nil {
		t.Fatalf("connect over TLS: %v", err)
	}
	t.Cleanup(func() { u.Close(context.Background()) })
	msgs := messages(3, 2)
	if err := uplink.SendAll(ctx, u.NewBatch(), msgs); err != nil {
		t.Fatalf("Send over TLS: %v", err)
	}
	for i := range msgs {
		r := next(t, sub)
		if want := fmt.Sprintf(`"seq":%d,`, i+1); !strings.Contains(r.payload, want) || r.topic != "outpost/v1/pr-0001/meter-main/telemetry" {
			t.Errorf("message %d: %s %s, want seq %d on the meter's telemetry topic", i, r.topic, r.payload, i+1)
		}
	}

	for _, c := range []struct {
		name  string
		files *configs.TLS
		cause string // in the cause an installer reads
	}{
		{"no client certificate", &configs.TLS{CA: good.ca}, "the gateway's client certificate (hub.mqtt.tls.cert, hub.mqtt.tls.key)"},
		{"another CA", &configs.TLS{CA: other.ca, Cert: other.clientCert, Key: other.clientKey}, "the broker's certificate is not signed by a trusted CA (hub.mqtt.tls.ca)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bad := New(configs.MQTT{URL: b.TLSURL(), ClientID: "bad", TLS: c.files}, station, quiet())
			short, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if err := bad.Connect(short); err == nil {
				t.Fatal("connected")
			}
			defer bad.Close(context.Background())
			if err := uplink.SendAll(context.Background(), bad.NewBatch(), messages(1, 1)); err != ErrNotConnected {
				t.Errorf("Send without a connection: %v, want ErrNotConnected", err)
			}
			if got := bad.Connection(); got.Connected || !strings.Contains(got.Cause, c.cause) {
				t.Errorf("connection %+v, want the cause to say %q", got, c.cause)
			}
		})
	}
}

func TestTLSFileErrors(t *testing.T) {
	u := New(configs.MQTT{URL: "ssl://127.0.0.1:1", TLS: &configs.TLS{CA: "/nonexistent/ca.pem"}}, station, quiet())
	err := u.Connect(context.Background())
	if err == nil || err.Error() != "mqtt uplink: tls ca: open /nonexistent/ca.pem: no such file or directory" {
		t.Errorf("Connect with a missing CA file: %v", err)
	}
}

// TestConnectCauseNames: a broker whose host name does not resolve is
// told apart from one that refuses connections, in words that name the
// station file's key.
func TestConnectCauseNames(t *testing.T) {
	const broker, key = "tcp://hub.example.invalid:1883", "hub.mqtt.url"
	dial := func(err error) error {
		return fmt.Errorf("network Error : %w", &net.OpError{Op: "dial", Net: "tcp", Err: err})
	}
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"name unknown", dial(&net.DNSError{Name: "hub.example.invalid", Err: "no such host", IsNotFound: true}),
			"the host name hub.example.invalid (hub.mqtt.url) is not known to the station's DNS: check its spelling, or give its address"},
		{"DNS server away", dial(&net.DNSError{Name: "hub.example.invalid", Err: "i/o timeout", IsTimeout: true}),
			"the host name hub.example.invalid (hub.mqtt.url) could not be looked up (i/o timeout): the station's DNS server does not answer"},
		{"refused", dial(syscall.ECONNREFUSED),
			"nothing listens at tcp://hub.example.invalid:1883 (hub.mqtt.url): the broker is down, or the address or port is wrong"},
	} {
		if got := connectCause(c.err, broker, key, false, false); got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}
