package influx

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"outpost/configs"
)

// Check asks InfluxDB to take an empty write to the configured bucket with
// the configured token, which writes nothing: it tells whether the server
// answers, takes the credentials, and has the bucket. The error says which
// key of the station file to look at.
func Check(ctx context.Context, cfg configs.Influx) error {
	u, err := url.Parse(strings.TrimSuffix(cfg.URL, "/") + "/api/v2/write")
	if err != nil {
		return fmt.Errorf("hub.influx.url: %w", err)
	}
	u.RawQuery = url.Values{"bucket": {cfg.Bucket}, "org": {cfg.Org}, "precision": {"ns"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return fmt.Errorf("hub.influx.url: %w", err)
	}
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Token "+cfg.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("InfluxDB at %s does not answer (hub.influx.url): %v", configs.Redact(cfg.URL), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	what := misconfigured(resp.StatusCode, cfg.Bucket)
	switch {
	case what != "":
		return fmt.Errorf("%s: %s", what, strings.TrimSpace(string(body)))
	case resp.StatusCode == http.StatusNoContent, resp.StatusCode == http.StatusBadRequest:
		return nil // taken, or an empty write refused as such: it got past the credentials and the bucket
	case resp.StatusCode/100 == 2:
		return notInflux(configs.Redact(cfg.URL), resp.Status)
	}
	return fmt.Errorf("InfluxDB answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// misconfigured says which key of the station file a status InfluxDB
// answers a write with points at, or "" for none.
func misconfigured(status int, bucket string) string {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return "InfluxDB refused the credentials (hub.influx.token)"
	case http.StatusNotFound:
		return fmt.Sprintf("InfluxDB has no bucket or database %q (hub.influx.bucket)", bucket)
	}
	return ""
}
