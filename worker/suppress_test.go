package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// This file checks the suppression list in the pipeline (contract §9):
// what reaches the SMTP server (RCPT TO, parsed back), what the events
// say, what the list holds after a bounce, and the metrics.

const testPublicURL = "https://mail.example.com"

// suppressBundle is a worker on a real SMTP server with one-click
// unsubscribe configured, and the store of its suppression list.
type suppressBundle struct {
	*testBundle
	smtp   *smtptest.Server
	store  *suppress.Store
	tokens *suppress.Tokens
}

func setupSuppress(t *testing.T, mod func(*Config)) *suppressBundle {
	t.Helper()
	srv := smtptest.NewServer(t)
	tokens, err := suppress.NewTokens([]byte("a test secret of enough bytes"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Retry: fastRetry(3), PublicURL: testPublicURL, Unsubscribe: tokens,
		Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "news@example.com"}}}
	if mod != nil {
		mod(&cfg)
	}
	b := setup(t, cfg)
	store, err := suppress.Open(t.Context(), b.js, schema.Names{}, suppress.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &suppressBundle{testBundle: b, smtp: srv, store: store, tokens: tokens}
}

// suppressNow adds an entry and waits until the worker's copy has it.
func (b *suppressBundle) suppressNow(t *testing.T, addr string, reason suppress.Reason) {
	t.Helper()
	changed := b.worker.checker.Changed()
	if _, err := b.store.Add(t.Context(), suppress.Entry{Address: addr, Reason: reason}, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatalf("the worker did not see %s suppressed", addr)
	}
}

// publishOn publishes req on subject with its Id as Nats-Msg-Id.
func (b *suppressBundle) publishOn(t *testing.T, subject string, req map[string]any) {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	jstest.Publish(t, b.js, subject, data, req["Id"].(string))
}

// received returns the envelope recipients of the messages the server
// received with Message-ID <id.jetmail@…>.
func (b *suppressBundle) received(t *testing.T, id string) (rcpts []string, msgs []*mail.Message) {
	t.Helper()
	for _, m := range b.smtp.Messages() {
		pm, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatalf("message at the server does not parse: %v", err)
		}
		if strings.HasPrefix(pm.Header.Get("Message-Id"), "<"+id+".") {
			rcpts = append(rcpts, m.To...)
			msgs = append(msgs, pm)
		}
	}
	slices.Sort(rcpts)
	return rcpts, msgs
}

func suppressedIn(r schema.Result) map[string]string {
	out := map[string]string{}
	for _, rr := range r.Recipients {
		if rr.Suppressed {
			if rr.Status != schema.Status403 {
				panic("a suppressed recipient without 403")
			}
			out[rr.Address] = rr.Reason
		}
	}
	return out
}

// TestSuppressionSkipsRecipients: suppressed recipients are skipped and
// listed, the others are sent to; when none is left the message fails 403
// without an SMTP transaction; unsubscribe entries apply to the bulk lane
// and Unsubscribe messages only; IgnoreSuppression sends anyway.
func TestSuppressionSkipsRecipients(t *testing.T) {
	t.Parallel()
	b := setupSuppress(t, nil)
	b.suppressNow(t, "gone@example.net", suppress.Manual)
	b.suppressNow(t, "Optout@Example.net", suppress.Unsubscribe)
	b.suppressNow(t, "@blocked.example", suppress.Manual)
	names := schema.DefaultNames()

	for _, tc := range []struct {
		name       string
		subject    string
		req        map[string]any
		status     schema.Status
		rcpts      []string          // envelope recipients at the server
		suppressed map[string]string // address → reason, in the final event
	}{
		{name: "one of two suppressed", subject: names.SendSubject(),
			req:    map[string]any{"To": "keep@example.net, gone@example.net", "Subject": "s", "Body": "b"},
			status: 200, rcpts: []string{"keep@example.net"}, suppressed: map[string]string{"gone@example.net": "manual"}},
		{name: "a domain entry, Bcc included", subject: names.SendSubject(),
			req:    map[string]any{"To": "keep@example.net", "Bcc": "x@blocked.example", "Subject": "s", "Body": "b"},
			status: 200, rcpts: []string{"keep@example.net"}, suppressed: map[string]string{"x@blocked.example": "manual"}},
		{name: "every recipient suppressed: 403, no transaction", subject: names.SendSubject(),
			req:    map[string]any{"To": "gone@example.net", "Cc": "y@blocked.example", "Subject": "s", "Body": "b"},
			status: 403, suppressed: map[string]string{"gone@example.net": "manual", "y@blocked.example": "manual"}},
		{name: "unsubscribe entry, normal lane: sent", subject: names.SendSubject(),
			req:    map[string]any{"To": "optout@example.net", "Subject": "s", "Body": "b"},
			status: 200, rcpts: []string{"optout@example.net"}},
		{name: "unsubscribe entry, urgent lane: sent", subject: names.UrgentSubject(),
			req:    map[string]any{"To": "optout@example.net", "Subject": "s", "Body": "b"},
			status: 200, rcpts: []string{"optout@example.net"}},
		{name: "unsubscribe entry, bulk lane: suppressed", subject: names.BulkSubject(),
			req:    map[string]any{"To": "optout@example.net", "Subject": "s", "Body": "b"},
			status: 403, suppressed: map[string]string{"optout@example.net": "unsubscribe"}},
		{name: "unsubscribe entry, a message with Unsubscribe: suppressed", subject: names.SendSubject(),
			req:    map[string]any{"To": "optout@example.net, keep@example.net", "Subject": "s", "Body": "b", "Unsubscribe": "mailto:u@example.com"},
			status: 200, rcpts: []string{"keep@example.net"}, suppressed: map[string]string{"optout@example.net": "unsubscribe"}},
		{name: "IgnoreSuppression: sent to all", subject: names.BulkSubject(),
			req:    map[string]any{"To": "gone@example.net, optout@example.net", "Subject": "s", "Body": "b", "IgnoreSuppression": true},
			status: 200, rcpts: []string{"gone@example.net", "optout@example.net"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.NewReplacer(" ", "-", ":", "", ",", "").Replace(tc.name)
			tc.req["Id"] = id
			before := b.smtp.Hits("MAIL")
			b.publishOn(t, tc.subject, tc.req)
			fin, events := b.results.Final(t, id)
			if fin.Status != tc.status {
				t.Fatalf("final %d %s (%s), want %d", fin.Status, fin.State, fin.Error, tc.status)
			}
			got, _ := b.received(t, id)
			if !slices.Equal(got, tc.rcpts) {
				t.Errorf("RCPT TO at the server %v, want %v", got, tc.rcpts)
			}
			if s := suppressedIn(fin); len(s) != len(tc.suppressed) || !mapsEqual(s, tc.suppressed) {
				t.Errorf("suppressed in the final event %v, want %v", s, tc.suppressed)
			}
			if tc.status == 403 {
				if !strings.Contains(fin.Error, "suppression list") {
					t.Errorf("Error %q does not say why", fin.Error)
				}
				if n := b.smtp.Hits("MAIL") - before; n != 0 {
					t.Errorf("%d SMTP transactions for a message with every recipient suppressed", n)
				}
				if len(events) != 1 {
					t.Errorf("events %v, want the failed one only", states(events))
				}
			}
		})
	}
	for reason, want := range map[string]float64{"manual": 4, "unsubscribe": 2, "bounce": 0} {
		if got := testutil.ToFloat64(b.worker.metrics.Suppressed.WithLabelValues(reason)); got != want {
			t.Errorf("jetmail_suppressed_total{reason=%q} = %g, want %g", reason, got, want)
		}
	}
	// No dead letter for a message that is only suppressed.
	if got := testutil.ToFloat64(b.worker.metrics.DeadLetters); got != 0 {
		t.Errorf("%g dead letters", got)
	}
}

func mapsEqual(a, b map[string]string) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return len(a) == len(b)
}

// TestBounceFeedsTheList: a recipient refused as unknown (550 5.1.1) is
// added with reason bounce, the message's Id and an expiry, and the next
// message to it is suppressed without an SMTP transaction; a policy
// refusal (550 5.7.1) is not added.
func TestBounceFeedsTheList(t *testing.T) {
	t.Parallel()
	b := setupSuppress(t, func(c *Config) { c.SuppressBounceTTL = 48 * time.Hour })
	b.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "unknown@example.net", Code: 550, Enhanced: "5.1.1", Message: "no such user"})
	b.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "denied@example.net", Code: 550, Enhanced: "5.7.1", Message: "relay denied"})

	b.publish(t, map[string]any{"Id": "b1", "To": "unknown@example.net, ok@example.net, denied@example.net", "Subject": "s", "Body": "b"}, "b1")
	fin, _ := b.results.Final(t, "b1")
	if fin.Status != 200 || b.smtp.FaultHits() != 2 {
		t.Fatalf("final %d (%s), faults fired %d, want 200 and 2", fin.Status, fin.Error, b.smtp.FaultHits())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := b.store.Get(ctx, "unknown@example.net")
	if err != nil {
		t.Fatalf("the bounce is not on the list: %v", err)
	}
	if e.Reason != suppress.Bounce || e.Id != "b1" || e.Expires == nil {
		t.Errorf("entry %+v, want reason bounce, Id b1 and an expiry", e)
	} else if d := time.Until(*e.Expires); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("entry expires in %s, want the 48h TTL", d)
	}
	if _, err := b.store.Get(ctx, "denied@example.net"); err == nil {
		t.Error("a policy refusal was put on the list")
	}
	if got := testutil.ToFloat64(b.worker.metrics.Bounces); got != 1 {
		t.Errorf("jetmail_bounces_total = %g, want 1", got)
	}

	jstest.Eventually(t, 10*time.Second, func() bool {
		_, ok := b.worker.checker.Check("unknown@example.net", schema.LaneNormal, false)
		return ok
	})
	mails := b.smtp.Hits("MAIL")
	b.publish(t, map[string]any{"Id": "b2", "To": "Unknown@Example.net", "Subject": "s", "Body": "b"}, "b2")
	fin, _ = b.results.Final(t, "b2")
	if fin.Status != 403 || suppressedIn(fin)["Unknown@Example.net"] != "bounce" {
		t.Fatalf("message to a bounced address: %d %s %+v, want 403 with the recipient suppressed (bounce)", fin.Status, fin.Error, fin.Recipients)
	}
	if b.smtp.Hits("MAIL") != mails {
		t.Error("an SMTP transaction for a message to a bounced address")
	}
	if got := testutil.ToFloat64(b.worker.metrics.Suppressed.WithLabelValues("bounce")); got != 1 {
		t.Errorf("jetmail_suppressed_total{reason=bounce} = %g, want 1", got)
	}
}

// TestOneClickCopies: "Unsubscribe": true sends each recipient its own
// copy whose List-Unsubscribe names that recipient's token at the public
// URL, with the RFC 8058 Post field; a bounce on one copy does not stop
// the others, and both outcomes are in the event.
func TestOneClickCopies(t *testing.T) {
	t.Parallel()
	b := setupSuppress(t, nil)
	b.smtp.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "nobody@example.net", Code: 550, Enhanced: "5.1.1", Message: "no such user"})
	b.publishOn(t, schema.DefaultNames().BulkSubject(), map[string]any{"Id": "oc1", "To": "a@example.net, nobody@example.net", "Cc": "c@example.net",
		"Subject": "news", "Body": "b", "Unsubscribe": true})
	fin, _ := b.results.Final(t, "oc1")
	if fin.Status != 200 || b.smtp.FaultHits() != 1 {
		t.Fatalf("final %d (%s), faults %d; want 200 and the fault fired", fin.Status, fin.Error, b.smtp.FaultHits())
	}
	if len(fin.Recipients) != 1 || fin.Recipients[0].Address != "nobody@example.net" || fin.Recipients[0].Status != 404 {
		t.Errorf("Recipients %+v, want nobody@example.net 404", fin.Recipients)
	}
	rcpts, msgs := b.received(t, "oc1")
	if !slices.Equal(rcpts, []string{"a@example.net", "c@example.net"}) || len(msgs) != 2 {
		t.Fatalf("RCPT TO %v in %d messages, want a@ and c@ in one each", rcpts, len(msgs))
	}
	for _, m := range b.smtp.Messages() {
		pm, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatal(err)
		}
		if len(m.To) != 1 {
			t.Errorf("a one-click copy to %v: a token names one person", m.To)
			continue
		}
		list := strings.Join(strings.Fields(pm.Header.Get("List-Unsubscribe")), "")
		prefix := "<" + testPublicURL + "/v1/unsubscribe/"
		if !strings.HasPrefix(list, prefix) || !strings.HasSuffix(list, ">") {
			t.Errorf("copy to %s: List-Unsubscribe %q", m.To[0], list)
			continue
		}
		addr, err := b.tokens.Address(strings.TrimSuffix(strings.TrimPrefix(list, prefix), ">"))
		if err != nil || addr != m.To[0] {
			t.Errorf("copy to %s: its token names %q (%v)", m.To[0], addr, err)
		}
		if pm.Header.Get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" {
			t.Errorf("copy to %s without List-Unsubscribe-Post", m.To[0])
		}
		if pm.Header.Get("To") == "" || !strings.Contains(pm.Header.Get("Cc"), "c@example.net") {
			t.Errorf("copy to %s lost the To or Cc header", m.To[0])
		}
	}
	if _, err := b.store.Get(t.Context(), "nobody@example.net"); err != nil {
		t.Errorf("the bounce of one copy is not on the list: %v", err)
	}
}

// TestOneClickNotConfigured: without a public URL and secret, a request
// with "Unsubscribe": true is invalid (400 naming the field), and nothing
// is sent.
func TestOneClickNotConfigured(t *testing.T) {
	t.Parallel()
	b := setupSuppress(t, func(c *Config) { c.PublicURL, c.Unsubscribe = "", nil })
	b.publish(t, map[string]any{"Id": "nc1", "To": "a@example.net", "Subject": "s", "Body": "b", "Unsubscribe": true}, "nc1")
	fin, _ := b.results.Final(t, "nc1")
	if fin.Status != 400 || len(fin.Fields) != 1 || fin.Fields[0].Field != "Unsubscribe" || !strings.Contains(fin.Error, "--public-url") {
		t.Fatalf("final %d %q %+v, want 400 on Unsubscribe saying what to configure", fin.Status, fin.Error, fin.Fields)
	}
	if n := b.smtp.MessageCount(); n != 0 {
		t.Errorf("%d messages sent", n)
	}
}

// TestSuppressionConfig: the one-click settings come in pairs, and the
// public URL must be one.
func TestSuppressionConfig(t *testing.T) {
	t.Parallel()
	tokens, _ := suppress.NewTokens([]byte("a test secret of enough bytes"))
	for _, tc := range []struct {
		name string
		cfg  Config
		bad  string
	}{
		{"both", Config{PublicURL: "https://m.example.com/", Unsubscribe: tokens}, ""},
		{"URL without secret", Config{PublicURL: "https://m.example.com"}, "PublicURL"},
		{"secret without URL", Config{Unsubscribe: tokens}, "PublicURL"},
		{"not a URL", Config{PublicURL: "m.example.com", Unsubscribe: tokens}, "PublicURL"},
		{"a query", Config{PublicURL: "https://m.example.com/?x=1", Unsubscribe: tokens}, "PublicURL"},
		{"bounce TTL too short", Config{SuppressBounceTTL: time.Second}, "SuppressBounceTTL"},
	} {
		err := tc.cfg.Validate()
		if tc.bad == "" && err != nil || tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad+":")) {
			t.Errorf("%s: Validate() = %v, want an error on %q", tc.name, err, tc.bad)
		}
	}
}

// TestOneClickCopiesInTheOutbox: the file transport keeps every
// recipient's copy of a one-click message, each with its own link, as
// <Id>.<n>.eml, where one <Id>.eml would keep only the last.
func TestOneClickCopiesInTheOutbox(t *testing.T) {
	t.Parallel()
	tokens, err := suppress.NewTokens([]byte("a test secret of enough bytes"))
	if err != nil {
		t.Fatal(err)
	}
	outbox := t.TempDir()
	b := setup(t, Config{Retry: fastRetry(3), PublicURL: testPublicURL, Unsubscribe: tokens, Outbox: outbox})
	data, _ := json.Marshal(map[string]any{"Id": "ocf", "From": "news@example.com",
		"To": "a@example.net, b@example.net", "Subject": "news", "Body": "b", "Unsubscribe": true})
	jstest.Publish(t, b.js, schema.DefaultNames().BulkSubject(), data, "ocf")
	if fin, _ := b.results.Final(t, "ocf"); fin.Status != 200 {
		t.Fatalf("final %+v", fin)
	}
	names, _ := filepath.Glob(filepath.Join(outbox, "ocf*.eml"))
	slices.Sort(names)
	if want := []string{filepath.Join(outbox, "ocf.1.eml"), filepath.Join(outbox, "ocf.2.eml")}; !slices.Equal(names, want) {
		t.Fatalf("outbox holds %v, want %v", names, want)
	}
	seen := map[string]bool{}
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		pm, err := mail.ReadMessage(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		list := strings.Join(strings.Fields(pm.Header.Get("List-Unsubscribe")), "")
		addr, err := tokens.Address(strings.TrimSuffix(strings.TrimPrefix(list, "<"+testPublicURL+"/v1/unsubscribe/"), ">"))
		if err != nil {
			t.Fatalf("%s: List-Unsubscribe %q: %v", name, list, err)
		}
		seen[addr] = true
	}
	if !seen["a@example.net"] || !seen["b@example.net"] {
		t.Errorf("the copies' links name %v, want a@ and b@ each once", seen)
	}
}
