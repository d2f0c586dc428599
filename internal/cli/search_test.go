package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/httpapi"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
)

// searchServer is an HTTP API with a search index, as a worker or gateway
// serves it, on a JetStream server with jetmail's streams.
type searchServer struct {
	js  jetstream.JetStream
	idx *search.Index
	url string
}

// startSearchServer serves the API with the given tokens and an index.
func startSearchServer(t *testing.T, tokens ...string) *searchServer {
	t.Helper()
	_, js := jstest.Start(t).Connect(t)
	jstest.EnsureStreams(t, js, schema.Names{})
	idx, err := search.Open(filepath.Join(t.TempDir(), "search.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idx.Close() })
	jstest.Serve(t, func(ctx context.Context) error { return idx.Run(ctx, js, schema.Names{}) }, nil)
	api, err := httpapi.New(httpapi.Config{Search: idx, Tokens: tokens}, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &searchServer{js: js, idx: idx, url: srv.URL}
}

// publish stores result events as a worker would and waits until the
// index has them.
func (s *searchServer) publish(t *testing.T, events ...schema.Result) {
	t.Helper()
	var seq uint64
	for _, r := range events {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := s.js.Publish(t.Context(), "mail.result."+r.Id, data)
		if err != nil {
			t.Fatal(err)
		}
		seq = ack.Sequence
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := s.idx.WaitSeq(ctx, seq); err != nil {
		t.Fatal(err)
	}
}

// searchEvents are the events of three messages: s1 sent, s2 failed, s3
// accepted, with s3 the newest.
func searchEvents(at time.Time) []schema.Result {
	acc := func(id string, sec int, lane schema.Lane, subject string, rcpts ...string) schema.Result {
		return schema.Result{
			Id: id, Status: schema.Status202, State: schema.StateAccepted, Attempt: 1, Lane: lane, BatchId: "spring",
			Envelope: &schema.Envelope{From: "shop@example.com", Recipients: rcpts, Subject: subject},
			Time:     at.Add(time.Duration(sec) * time.Second),
		}
	}
	s1 := acc("s1", 1, schema.LaneNormal, "Zażółć gęślą jaźń", "Jan@Example.com", "bcc@example.org")
	s2 := acc("s2", 2, schema.LaneBulk, "Invoice 2026/11", "ola@example.com")
	s3 := acc("s3", 3, schema.LaneUrgent, "Your invoice", "jan@example.com")
	sent, failed := s1, s2
	sent.State, sent.Status, sent.Envelope, sent.Time = schema.StateSent, schema.Status200, nil, s1.Time.Add(time.Second)
	failed.State, failed.Status, failed.Envelope, failed.Error = schema.StateFailed, schema.Status500, nil, "550 rejected"
	return []schema.Result{s1, s2, sent, failed, s3}
}

func TestSearchCommand(t *testing.T) {
	t.Parallel()
	srv := startSearchServer(t, "s3cret")
	at := time.Now().Add(-2 * time.Hour)
	srv.publish(t, searchEvents(at)...)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("# the API token\ns3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	api := []string{"search", "--api-url", srv.url, "--api-token", "s3cret"}

	// The table: newest first, the subject and recipients from the
	// envelope even for a message whose latest event has none.
	r := jetmail(t, testCtx(t), "", append(api, "--recipient", "JAN@example.com")...)
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "ID STATE STATUS LANE TIME SUBJECT TO" {
		t.Fatalf("table:\n%s", r.stdout)
	}
	for i, want := range [][]string{
		{"s3", "accepted", "202", "urgent", "Your invoice", "jan@example.com"},
		{"s1", "sent", "200", "normal", "Zażółć gęślą jaźń", "Jan@Example.com +1"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("row %d %q lacks %q", i+1, lines[i+1], w)
			}
		}
	}

	// JSON lines: the events as stored, with the token from a file.
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--subject", "INVOICE"}, []string{"s3", "s2"}},
		{[]string{"--recipient", "bcc@example.org"}, []string{"s1"}},
		{[]string{"--state", "failed"}, []string{"s2"}},
		{[]string{"--lane", "bulk"}, []string{"s2"}},
		{[]string{"--batch", "spring", "--state", "sent"}, []string{"s1"}},
		{[]string{"--since", "3h", "--until", "1h"}, []string{"s3", "s2", "s1"}},
		{[]string{"--since", "1h"}, nil},
		{[]string{"--since", at.Add(1500 * time.Millisecond).Format(time.RFC3339Nano)}, []string{"s3", "s2"}},
		{[]string{"--limit", "2"}, []string{"s3", "s2"}},
	} {
		r := jetmail(t, testCtx(t), "", append([]string{"search", "--api-url", srv.url, "--api-token-file", tokenFile, "--json"}, c.args...)...)
		if r.code != 0 {
			t.Errorf("%v: exit %d: %s", c.args, r.code, r.stderr)
			continue
		}
		var got []string
		for line := range strings.Lines(r.stdout) {
			var res schema.Result
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatalf("%v: not a JSON line: %q", c.args, line)
			}
			got = append(got, res.Id)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%v: found %v, want %v", c.args, got, c.want)
		}
	}
	r = jetmail(t, testCtx(t), "", append(api, "--recipient", "nobody@example.com")...)
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no messages match") {
		t.Errorf("no match: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestSearchCommandPages: search follows the pages of the answer up to
// --limit, and with --limit 0 to the end, each message once.
func TestSearchCommandPages(t *testing.T) {
	t.Parallel()
	srv := startSearchServer(t)
	const n = 2*searchPageSize + 50
	var evs []schema.Result
	var want []string
	at := time.Now().Add(-time.Hour)
	for i := range n {
		id := fmt.Sprintf("pg%04d", i)
		evs = append(evs, schema.Result{Id: id, Status: schema.Status202, State: schema.StateAccepted, Attempt: 1, Lane: schema.LaneBulk,
			Envelope: &schema.Envelope{From: "a@example.com", Recipients: []string{"pager@example.com"}, Subject: "page"},
			Time:     at.Add(time.Duration(i) * time.Millisecond)})
		want = append(want, id)
	}
	slices.Reverse(want)
	srv.publish(t, evs...)
	for _, c := range []struct {
		limit string
		want  []string
	}{{"0", want}, {"250", want[:250]}, {"50", want[:50]}} {
		r := jetmail(t, testCtx(t), "", "search", "--api-url", srv.url, "--recipient", "pager@example.com", "--json", "--limit", c.limit)
		if r.code != 0 {
			t.Fatalf("--limit %s: exit %d", c.limit, r.code)
		}
		var got []string
		for line := range strings.Lines(r.stdout) {
			var res schema.Result
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatal(err)
			}
			got = append(got, res.Id)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("--limit %s: %d messages, want %d in order", c.limit, len(got), len(c.want))
		}
	}
}

// TestSearchCommandErrors: what the API refuses, a wrong token and an
// unreachable API are exit status 2; an instance without search is 1.
func TestSearchCommandErrors(t *testing.T) {
	t.Parallel()
	srv := startSearchServer(t, "s3cret")
	_, js := jstest.Start(t).Connect(t)
	plain, err := httpapi.New(httpapi.Config{}, js, nil)
	if err != nil {
		t.Fatal(err)
	}
	noSearch := httptest.NewServer(plain.Handler())
	t.Cleanup(noSearch.Close)
	token := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(token, []byte("# nothing\n"), 0o600)
	for _, c := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"--api-url", srv.url, "--api-token", "s3cret", "--state", "delivered"}, 2, "bad parameter state"},
		{[]string{"--api-url", srv.url, "--api-token", "s3cret", "--lane", "fast"}, 2, "bad parameter lane"},
		{[]string{"--api-url", srv.url, "--api-token", "wrong"}, 2, "401"},
		{[]string{"--api-url", srv.url}, 2, "missing or invalid bearer token"},
		{[]string{"--api-url", srv.url, "--api-token", "s3cret", "--since", "yesterday"}, 2, "--since"},
		{[]string{"--api-url", srv.url, "--api-token", "s3cret", "--limit", "-1"}, 2, "--limit"},
		{[]string{"--api-url", srv.url, "--api-token", "s3cret", "--api-token-file", token}, 2, "not both"},
		{[]string{"--api-url", srv.url, "--api-token-file", token}, 2, "holds no token"},
		{[]string{"--api-url", "localhost:8080"}, 2, "--api-url"},
		{[]string{"--api-url", "http://" + strings.TrimPrefix(deadURL(t), "nats://")}, 2, "cannot reach the HTTP API"},
		{[]string{"--api-url", noSearch.URL}, 1, "search is not enabled on this instance"},
	} {
		r := jetmail(t, testCtx(t), "", append([]string{"search"}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.stderr) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, r.code, r.stderr, c.code, c.stderr)
		}
		if strings.Contains(r.stderr, "s3cret") {
			t.Errorf("%v: the token is in the message: %q", c.args, r.stderr)
		}
	}
}

// TestSearchCommandEnv sets real environment variables, so it can not run
// in parallel.
func TestSearchCommandEnv(t *testing.T) {
	srv := startSearchServer(t, "env-token")
	srv.publish(t, searchEvents(time.Now())...)
	t.Setenv("JETMAIL_API_URL", srv.url)
	t.Setenv("JETMAIL_API_TOKEN", "env-token")
	r := jetmail(t, testCtx(t), "", "search", "--json", "--state", "failed")
	if r.code != 0 || !strings.Contains(r.stdout, `"Id":"s2"`) {
		t.Errorf("JETMAIL_API_URL and JETMAIL_API_TOKEN not used: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = jetmail(t, testCtx(t), "", "search", "--api-url", "http://"+strings.TrimPrefix(deadURL(t), "nats://"))
	if r.code != 2 {
		t.Errorf("--api-url does not beat JETMAIL_API_URL: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestWorkerSearchIndex runs a worker with --index-dir: a message sent
// through it is found by recipient and subject with `jetmail search`
// against the worker's own HTTP API, and the index file is where the flag
// says.
func TestWorkerSearchIndex(t *testing.T) {
	t.Parallel()
	_, natsURL := startNATS(t)
	dir := filepath.Join(t.TempDir(), "index")
	w := startWorker(t, "--nats-url", natsURL, "--outbox", t.TempDir(), "--http-addr", "127.0.0.1:0", "--index-dir", dir)
	r := jetmail(t, testCtx(t), "", "send", "--nats-url", natsURL, "--to", "Jan <jan@example.com>", "--bcc", "audit@example.org",
		"--subject", "Your order 1234", "--body", "b", "--id", "idx-1", "--wait")
	if r.code != 0 {
		t.Fatalf("send: exit %d", r.code)
	}
	api := "http://" + w.httpAddr(t)
	var found []string
	jstest.Eventually(t, 10*time.Second, func() bool {
		r := jetmail(t, testCtx(t), "", "search", "--api-url", api, "--recipient", "AUDIT@example.org", "--subject", "order 12", "--json")
		found = nil
		for line := range strings.Lines(r.stdout) {
			var res schema.Result
			if json.Unmarshal([]byte(line), &res) == nil {
				found = append(found, res.Id+"/"+string(res.State))
			}
		}
		return slices.Equal(found, []string{"idx-1/sent"})
	})
	if _, err := os.Stat(filepath.Join(dir, "search.db")); err != nil {
		t.Errorf("no index in --index-dir: %v", err)
	}
}
