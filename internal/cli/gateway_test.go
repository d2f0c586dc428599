package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// TestGateway runs `jetmail gateway` beside a worker: a POST with a token
// is stored and delivered, a POST without one is refused, a sender the
// gateway's connection does not allow is refused, and GET tells the status.
func TestGateway(t *testing.T) {
	t.Parallel()
	_, url := startNATS(t)
	startWorker(t, "--nats-url", url, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0")
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# api tokens\ns3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs := newWatchBuffer()
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"gateway", "--nats-url", url, "--http-addr", "127.0.0.1:0", "--log-format", "json",
			"--api-token-file", tokens, "--smtp-allowed-senders", "@example.com"}, strings.NewReader(""), io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("gateway exited %d\n%s", code, logs)
			}
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop")
		}
	})
	if err := logs.waitFor(testCtx(t), `"msg":"gateway serving the HTTP API"`); err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	addr := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(logs.String())[1]
	base := "http://" + addr

	post := func(token, body string) (*http.Response, map[string]any) {
		req, _ := http.NewRequestWithContext(testCtx(t), "POST", base+"/v1/messages", strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp, out
	}
	if resp, _ := post("", `{"To":"a@example.com","From":"me@example.com"}`); resp.StatusCode != 401 {
		t.Errorf("no token: %d, want 401", resp.StatusCode)
	}
	if resp, _ := post("s3cret", `{"To":"a@example.com","From":"me@elsewhere.org"}`); resp.StatusCode != 403 {
		t.Errorf("sender not allowed: %d, want 403", resp.StatusCode)
	}
	resp, out := post("s3cret", `{"Id":"gw-1","To":"a@example.com","From":"me@example.com","Subject":"via HTTP"}`)
	if resp.StatusCode != 202 || out["Id"] != "gw-1" {
		t.Fatalf("POST: %d %v, want 202 gw-1", resp.StatusCode, out)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)
	if fin, err := p.Wait(testCtx(t), "gw-1"); err != nil || fin.Status != schema.Status200 {
		t.Fatalf("final result of gw-1: %+v, %v", fin, err)
	}
	req, _ := http.NewRequestWithContext(testCtx(t), "GET", base+"/v1/messages/gw-1", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	get, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer get.Body.Close()
	var res schema.Result
	if err := json.NewDecoder(get.Body).Decode(&res); err != nil || get.StatusCode != 200 || res.State != schema.StateSent {
		t.Fatalf("GET: %d %+v %v", get.StatusCode, res, err)
	}
	if strings.Contains(logs.String(), "s3cret") {
		t.Error("the token appears in the gateway's logs")
	}
}
