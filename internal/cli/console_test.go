package cli

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConsoleMounted checks that `jetmail worker` and `jetmail gateway`
// serve the web console on /ui/ beside the API, behind the same tokens, and
// that a login on one is a session on the other (they share the tokens).
func TestConsoleMounted(t *testing.T) {
	t.Parallel()
	_, natsURL := startNATS(t)
	w := startWorker(t, "--nats-url", natsURL, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0",
		"--api-token", "s3cret", "--index-dir", t.TempDir())
	workerAddr := regexp.MustCompile(`"msg":"serving http","addr":"([^"]+)"`).FindStringSubmatch(w.logs.String())
	if workerAddr == nil {
		t.Fatalf("no address in the worker's logs\n%s", w.logs)
	}

	ctx, cancel := context.WithCancel(context.Background())
	logs := newWatchBuffer()
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"gateway", "--nats-url", natsURL, "--http-addr", "127.0.0.1:0", "--log-format", "json",
			"--api-token", "s3cret", "--index-dir", "none"}, strings.NewReader(""), io.Discard, logs)
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
	gatewayAddr := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(logs.String())

	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(base, path string, ck *http.Cookie) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(testCtx(t), "GET", base+path, nil)
		if ck != nil {
			req.AddCookie(ck)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	var session *http.Cookie
	for _, base := range []string{"http://" + workerAddr[1], "http://" + gatewayAddr[1]} {
		if resp, _ := get(base, "/ui/", nil); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ui/login") {
			t.Errorf("%s/ui/ without a session: %d to %q, want 303 to the login", base, resp.StatusCode, resp.Header.Get("Location"))
		}
		if resp, _ := get(base, "/v1/messages/nope", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: the API without a token answers %d, want 401", base, resp.StatusCode)
		}
		if resp, _ := get(base, "/healthz", nil); resp.StatusCode != 200 {
			t.Errorf("%s/healthz: %d", base, resp.StatusCode)
		}
		if session == nil {
			req, _ := http.NewRequestWithContext(testCtx(t), "POST", base+"/ui/login", strings.NewReader(url.Values{"token": {"s3cret"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for _, c := range resp.Cookies() {
				if c.Name == "jetmail_console" {
					session = c
				}
			}
			if session == nil {
				t.Fatalf("%s: no session after logging in (%d)", base, resp.StatusCode)
			}
		}
		resp, body := get(base, "/ui/", session)
		if resp.StatusCode != 200 || !strings.Contains(body, "Workers") || !strings.Contains(body, "Waiting") {
			t.Errorf("%s/ui/ with the session: %d\n%s", base, resp.StatusCode, body)
		}
	}
	if strings.Contains(w.logs.String()+logs.String(), "s3cret") {
		t.Error("the token appears in the logs")
	}
}
