package console

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/httpapi"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/webhook"
	"github.com/jetmail/jetmail/worker"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// stack is everything real, in-process, as `jetmail worker` runs it: a
// JetStream server, an SMTP server, a worker delivering to it, the search
// index, the suppression list, and the worker's HTTP handler (the API on
// "/", the console on "/ui/") on an httptest server.
type stack struct {
	nats    *jstest.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	smtp    *smtptest.Server
	worker  *worker.Worker
	index   *search.Index
	store   *suppress.Store
	console *Console
	results *jstest.Results
	srv     *httptest.Server
	url     string
}

// stackOptions change the stack.
type stackOptions struct {
	tokens []string
	tls    bool // serve over TLS
	// noSearch runs without a search index.
	noSearch bool
	// webhookDown runs a webhook dispatcher whose receiver ("crm")
	// answers 503, so that its backlog grows.
	webhookDown bool
}

// testLogger logs to stderr when JETMAIL_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("JETMAIL_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newStack(t testing.TB, o stackOptions) *stack {
	t.Helper()
	s := &stack{nats: jstest.Start(t)}
	s.nc, s.js = s.nats.Connect(t)
	s.results = jstest.WatchResults(t, s.nc, "mail")
	s.smtp = smtptest.NewServer(t)
	ctx := context.Background()
	names := schema.DefaultNames()
	var err error
	if s.store, err = suppress.Open(ctx, s.js, names, suppress.Options{Logger: testLogger()}); err != nil {
		t.Fatal(err)
	}
	if !o.noSearch {
		if s.index, err = search.Open(filepath.Join(t.TempDir(), "search.db"), testLogger()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.index.Close() }) // after Run has stopped (cleanups run last first)
	}
	// The console first, so that it hears the worker's first heartbeat.
	if s.console, err = New(Config{Names: names, JS: s.js, Search: s.index, Suppressions: s.store,
		Tokens: o.tokens, Logger: testLogger()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.console.Close() })
	api, err := httpapi.New(httpapi.Config{Names: names, Tokens: o.tokens, Suppressions: s.store, Search: s.index}, s.js, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", s.console)
	mux.Handle("/", api.Handler())
	cfg := worker.Config{
		Connections: map[string]config.SMTP{"default": {URL: s.smtp.URL(), From: "noreply@example.com"}},
		Concurrency: 4,
		// Slow retries, so that a deferred message stays deferred.
		Retry:             worker.RetryPolicy{Initial: 10 * time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 3, MaxAge: 48 * time.Hour},
		GracePeriod:       5 * time.Second,
		HeartbeatInterval: 250 * time.Millisecond,
		Suppressions:      s.store,
		API:               mux,
		HTTPAddr:          "",
	}
	if s.worker, err = worker.New(cfg, s.js, prometheus.NewRegistry(), testLogger()); err != nil {
		t.Fatal(err)
	}
	jstest.Serve(t, s.worker.Run, s.worker.Ready)
	if s.index != nil {
		jstest.Serve(t, func(ctx context.Context) error { return s.index.Run(ctx, s.js, names) }, nil)
	}
	if o.webhookDown {
		crm := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
			http.Error(rw, "down for maintenance", http.StatusServiceUnavailable)
		}))
		t.Cleanup(crm.Close)
		d, err := webhook.New(s.js, names, []webhook.Config{{Name: "crm", URL: crm.URL, Secret: bytes.Repeat([]byte{7}, 32)}},
			prometheus.NewRegistry(), testLogger(), webhook.Options{})
		if err != nil {
			t.Fatal(err)
		}
		jstest.Serve(t, d.Run, nil)
	}
	if o.tls {
		s.srv = httptest.NewTLSServer(s.worker.Handler())
	} else {
		s.srv = httptest.NewServer(s.worker.Handler())
	}
	t.Cleanup(s.srv.Close)
	s.url = s.srv.URL
	return s
}

// publish publishes a request (JSON of req) with its Id as Nats-Msg-Id on
// the subject of its lane (Priority), as a producer would.
func (s *stack) publish(t testing.TB, req map[string]any) string {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	lane, _ := req["Priority"].(string)
	id, _ := req["Id"].(string)
	jstest.Publish(t, s.js, schema.DefaultNames().LaneSubject(schema.Lane(lane)), data, id)
	return id
}

// waitState waits until the latest event of id has state st.
func (s *stack) waitState(t testing.TB, id string, st schema.State) {
	t.Helper()
	s.results.WaitUntil(t, 15*time.Second, id+" "+string(st), func(events func(string) []schema.Result) bool {
		evs := events(id)
		return len(evs) > 0 && evs[len(evs)-1].State == st
	})
}

// waitIndexed waits until the search index holds every result event stored
// so far.
func (s *stack) waitIndexed(t testing.TB) {
	t.Helper()
	if s.index == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, "JETMAIL_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.index.WaitSeq(ctx, st.CachedInfo().State.LastSeq); err != nil {
		t.Fatalf("index did not catch up: %v", err)
	}
}

// client is a browser without a browser: a cookie jar, and redirects not
// followed so that tests see them.
type client struct {
	t    testing.TB
	base string
	hc   *http.Client
}

func (s *stack) client(t testing.TB) *client {
	jar, _ := cookiejar.New(nil)
	hc := *s.srv.Client() // a copy: the server's client is shared
	hc.Jar = jar
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &client{t: t, base: s.url, hc: &hc}
}

// answer is a response with its body read.
type answer struct {
	*http.Response
	body string
}

func (c *client) do(req *http.Request) answer {
	c.t.Helper()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{Response: resp, body: string(b)}
}

func (c *client) get(path string) answer {
	c.t.Helper()
	req, _ := http.NewRequest("GET", c.base+path, nil)
	return c.do(req)
}

func (c *client) post(path string, form url.Values) answer {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of a page.
func csrf(t testing.TB, a answer) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("no CSRF token on the page (status %d):\n%s", a.StatusCode, a.body)
	}
	return m[1]
}

// cookie returns the cookie name that a response set, or nil.
func cookie(a answer, name string) *http.Cookie {
	for _, c := range a.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}
