package mqtt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"outpost/gateway/model"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir, and returns the pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "station broker (test)"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "station.crt"), filepath.Join(dir, "station.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// The embedded broker with tls speaks TLS only: a kiosk that trusts its
// certificate logs in over ssl:// and its messages flow; one that speaks
// plain MQTT is not let in.
func TestEmbeddedTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, roots := selfSigned(t, dir)
	d, out := start(t, stationIn(t, dir, fmt.Sprintf(`%s, tls: {cert_file: %s, key_file: %s}`, embedded, certFile, keyFile), ""))
	k, err := dial(t, "ssl://"+d.Addr(), "kiosk-1", "pw-kiosk-1", false, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	out.health(t, "kiosk-1", model.Online)
	if err := k.publish("dev/kiosk-1/service_request", `{"ticket":"K1-TLS","category":"other"}`); err != nil {
		t.Fatal(err)
	}
	if e := out.nextOf(t, "kiosk-1", model.KindEvent).Event; e.Details["ticket"] != "K1-TLS" {
		t.Errorf("event %v", e.Details)
	}
	if _, err := connect(t, d.Addr(), "kiosk-2", "pw-kiosk-2", false); err == nil {
		t.Error("a plain tcp:// client logged in to the TLS broker")
	}
	// Nor one that does not trust the certificate.
	if _, err := dial(t, "ssl://"+d.Addr(), "kiosk-2", "pw-kiosk-2", false, &tls.Config{MinVersion: tls.VersionTLS12}); err == nil {
		t.Error("a client that does not trust the broker's certificate logged in")
	}
	out.none(t, "kiosk-2")
}
