package worker

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// smtpBundle is a testBundle whose worker sends to an smtptest server.
func smtpBundle(t *testing.T, srv *smtptest.Server, cfg Config) *testBundle {
	t.Helper()
	conn := cfg.Connections["default"]
	conn.URL = srv.URL()
	if conn.From == "" {
		conn.From = "noreply@example.com"
	}
	if conn.CAFile == "" && srv.CACertPEM() != nil {
		conn.CAFile = srv.CAFile(t)
	}
	if cfg.Connections == nil {
		cfg.Connections = map[string]config.SMTP{}
	}
	cfg.Connections["default"] = conn
	return setup(t, cfg)
}

func waitMessages(t *testing.T, srv *smtptest.Server, n int) []smtptest.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("waiting for %d messages at the SMTP server (have %d): %v", n, srv.MessageCount(), err)
	}
	return msgs
}

func states(events []schema.Result) []string {
	var out []string
	for _, e := range events {
		out = append(out, fmt.Sprintf("%s/%d@%d", e.State, e.Status, e.Attempt))
	}
	return out
}

// TestPipelineEveryField sends a request using every §2 field through
// JetStream and SMTP, and compares what arrived with the request.
func TestPipelineEveryField(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{})
	png := []byte("\x89PNG\r\n\x1a\nimage")
	req := map[string]any{
		"Id":          "all-fields",
		"To":          `"Kowalski, Jan" <jan@example.com>;ola@example.com`,
		"CC":          []string{"Zofia Łęcka <zofia@example.com>"},
		"Bcc":         "ukryty@example.com",
		"From":        "Sklep <shop@example.com>",
		"ReplyTo":     "help@example.com",
		"Subject":     polish,
		"Body":        `<p>` + polish + ` <img src="cid:logo"></p>`,
		"IsHtml":      "true",
		"TextBody":    polish + " (tekst)",
		"Importance":  "low",
		"Headers":     map[string]string{"List-Unsubscribe": "<mailto:u@example.com>"},
		"Metadata":    map[string]string{"tenant": "acme"},
		"Attachments": []map[string]string{{"FileName": "logo.png", "ContentId": "logo", "ContentType": "image/png", "ContentTransferEncoding": "base64", "ContentData": base64.StdEncoding.EncodeToString(png)}, {"FileName": polish + ".txt", "ContentData": polish}},
	}
	b.publish(t, req, "all-fields")
	fin, events := b.results.Final(t, "all-fields")
	if fin.Status != schema.Status200 || fin.Attempt != 1 || fin.MessageId != "<all-fields.jetmail@example.com>" || fin.Metadata["tenant"] != "acme" {
		t.Fatalf("final result = %+v", fin)
	}
	if fin.Smtp == nil || fin.Smtp.Code != 250 {
		t.Errorf("final result has no SMTP reply: %+v", fin.Smtp)
	}
	if diff := cmp.Diff([]string{"accepted/202@1", "sent/200@1"}, states(events)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	msgs := waitMessages(t, srv, 1)
	got := msgs[0]
	if got.From != "shop@example.com" {
		t.Errorf("MAIL FROM = %q", got.From)
	}
	if diff := cmp.Diff([]string{"jan@example.com", "ola@example.com", "zofia@example.com", "ukryty@example.com"}, got.To); diff != "" {
		t.Errorf("RCPT TO (-want +got):\n%s", diff)
	}
	pm := parseMessage(t, got.Data)
	if pm.Subject != polish {
		t.Errorf("Subject = %q", pm.Subject)
	}
	if strings.Contains(string(got.Data), "ukryty") || pm.Header.Get("Bcc") != "" {
		t.Error("the Bcc recipient is visible in the delivered message")
	}
	if diff := cmp.Diff([]string{"Kowalski, Jan <jan@example.com>", " <ola@example.com>"}, addrStrings(pm.addresses(t, "To"))); diff != "" {
		t.Errorf("To (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Zofia Łęcka <zofia@example.com>"}, addrStrings(pm.addresses(t, "Cc"))); diff != "" {
		t.Errorf("Cc (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Sklep <shop@example.com>"}, addrStrings(pm.addresses(t, "From"))); diff != "" {
		t.Errorf("From (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{" <help@example.com>"}, addrStrings(pm.addresses(t, "Reply-To"))); diff != "" {
		t.Errorf("Reply-To (-want +got):\n%s", diff)
	}
	if !strings.EqualFold(pm.Header.Get("Importance"), "low") || !strings.HasPrefix(pm.Header.Get("X-Priority"), "5") {
		t.Errorf("Importance %q X-Priority %q", pm.Header.Get("Importance"), pm.Header.Get("X-Priority"))
	}
	if pm.Header.Get("List-Unsubscribe") != "<mailto:u@example.com>" {
		t.Errorf("List-Unsubscribe = %q", pm.Header.Get("List-Unsubscribe"))
	}
	if pm.Header.Get("Message-Id") != fin.MessageId {
		t.Errorf("Message-ID %q, result says %q", pm.Header.Get("Message-Id"), fin.MessageId)
	}
	if _, err := pm.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	if p := pm.part("text/plain"); p == nil || string(p.Body) != polish+" (tekst)" {
		t.Errorf("text part = %+v", p)
	}
	if p := pm.part("text/html"); p == nil || !strings.Contains(string(p.Body), polish) {
		t.Errorf("html part = %+v", p)
	}
	if p := pm.part("image/png"); p == nil || p.ContentID != "logo" || string(p.Body) != string(png) {
		t.Errorf("inline image = %+v", p)
	}
	var txt *parsedPart
	for i := range pm.Parts {
		if pm.Parts[i].FileName == polish+".txt" {
			txt = &pm.Parts[i]
		}
	}
	if txt == nil || string(txt.Body) != polish || txt.Disposition != "attachment" {
		t.Errorf("attachment with a Polish name = %+v", txt)
	}
}

func TestPipelineTransientThenSent(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Times: 2, Code: 451, Enhanced: "4.3.0", Message: "try again later"})
	b := smtpBundle(t, srv, Config{})
	b.publish(t, map[string]any{"Id": "flaky", "To": "a@example.com", "Subject": "s", "Body": "b"}, "flaky")
	fin, events := b.results.Final(t, "flaky")
	if diff := cmp.Diff([]string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "sent/200@3"}, states(events)); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if srv.FaultHits() != 2 {
		t.Fatalf("fault fired %d times, want 2", srv.FaultHits())
	}
	for _, e := range events[1:3] {
		if e.NextAttemptAt == nil || e.Smtp == nil || e.Smtp.Code != 451 || e.Smtp.EnhancedCode != "4.3.0" || e.Error == "" {
			t.Errorf("deferred event lacks NextAttemptAt/Smtp/Error: %+v", e)
		}
	}
	if fin.Attempt != 3 || srv.MessageCount() != 1 {
		t.Errorf("attempt %d, %d messages delivered", fin.Attempt, srv.MessageCount())
	}
	if got := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "transient")); got != 2 {
		t.Errorf("smtp_attempts_total{transient} = %v, want 2", got)
	}
}

func TestPipelinePermanentFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fault  smtptest.Fault
		status schema.Status
	}{
		{"unknown user", smtptest.Fault{Cmd: "RCPT", Code: 550, Enhanced: "5.1.1", Message: "no such user"}, schema.Status404},
		{"policy", smtptest.Fault{Cmd: "MAIL", Code: 550, Enhanced: "5.7.1", Message: "sender rejected by policy"}, schema.Status403},
		{"content rejected", smtptest.Fault{Cmd: "DATA", Code: 554, Enhanced: "5.6.0", Message: "bad content"}, schema.Status500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t)
			srv.AddFault(tc.fault)
			b := smtpBundle(t, srv, Config{})
			b.publish(t, map[string]any{"Id": "perm", "To": "gone@example.com", "Subject": "s", "Body": "b"}, "perm")
			fin, events := b.results.Final(t, "perm")
			if fin.State != schema.StateFailed || fin.Status != tc.status || fin.Attempt != 1 {
				t.Fatalf("final = %+v, want failed %d after 1 attempt", fin, tc.status)
			}
			hits := srv.Hits(tc.fault.Cmd)
			if tc.fault.Cmd == "DATA" {
				hits += srv.Hits("BDAT") // the message goes with BDAT where the server offers CHUNKING
			}
			if len(events) != 2 || srv.FaultHits() != 1 || hits != 1 || srv.MessageCount() != 0 {
				t.Fatalf("%d events, fault fired %d times, %d %s commands, %d delivered", len(events), srv.FaultHits(), hits, tc.fault.Cmd, srv.MessageCount())
			}
			if fin.Smtp == nil || fin.Smtp.EnhancedCode != tc.fault.Enhanced {
				t.Errorf("final SMTP reply = %+v", fin.Smtp)
			}
			// The failed request is kept as a dead letter with its result.
			dead, err := b.js.Stream(context.Background(), "JETMAIL_DEAD")
			if err != nil {
				t.Fatal(err)
			}
			raw, err := dead.GetLastMsgForSubject(context.Background(), "mail.dead.perm")
			if err != nil {
				t.Fatalf("no dead letter: %v", err)
			}
			if !strings.Contains(string(raw.Data), `"gone@example.com"`) || !strings.Contains(string(raw.Data), fmt.Sprintf(`"Status":%d`, tc.status)) {
				t.Errorf("dead letter = %s", raw.Data)
			}
		})
	}
}

func TestPipelineAuthRejectedRetriedThen401(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t, smtptest.WithAuth("user", "right"))
	cfg := Config{Connections: map[string]config.SMTP{"default": {Password: "wrong"}}}
	cfg.Retry = RetryPolicy{Initial: 20 * time.Millisecond, Multiplier: 1.5, MaxInterval: 50 * time.Millisecond, MaxAttempts: 3, MaxAge: time.Hour}
	b := smtpBundle(t, srv, cfg)
	b.publish(t, map[string]any{"Id": "auth", "To": "a@example.com", "Subject": "s", "Body": "b"}, "auth")
	fin, events := b.results.Final(t, "auth")
	if diff := cmp.Diff([]string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "failed/401@3"}, states(events)); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if fin.Smtp == nil || fin.Smtp.Code != 535 {
		t.Errorf("final reply = %+v", fin.Smtp)
	}
	if srv.Hits("AUTH") != 3 || srv.MessageCount() != 0 {
		t.Errorf("AUTH %d times, %d delivered", srv.Hits("AUTH"), srv.MessageCount())
	}
	if strings.Contains(fmt.Sprint(events), "wrong") {
		t.Error("the password appears in a result event")
	}
}

func TestPipelineDropMidDataRetriedDeliveredOnce(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Times: 1, Drop: true})
	b := smtpBundle(t, srv, Config{})
	b.publish(t, map[string]any{"Id": "drop", "To": "a@example.com", "Subject": "s", "Body": strings.Repeat("line of text\n", 2000)}, "drop")
	fin, events := b.results.Final(t, "drop")
	if fin.Status != schema.Status200 || fin.Attempt != 2 || srv.FaultHits() != 1 {
		t.Fatalf("final %+v after fault hits %d; events %v", fin, srv.FaultHits(), states(events))
	}
	if n := srv.MessageCount(); n != 1 {
		t.Fatalf("%d messages delivered, want exactly 1", n)
	}
}

func TestPipelineInvalidRequests(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{})
	cases := map[string]string{
		"bad-json":     `{"To": "a@example.com", "Subject": `,
		"no-recipient": `{"Subject": "s", "Body": "b"}`,
		"bad-address":  `{"To": "not an address", "Body": "b"}`,
		"bad-base64":   `{"To": "a@example.com", "Attachments": [{"FileName": "a.bin", "ContentTransferEncoding": "base64", "ContentData": "!!!"}]}`,
		"crlf-subject": `{"To": "a@example.com", "Subject": "hi\r\nBcc: victim@example.com"}`,
		"crlf-header":  `{"To": "a@example.com", "Headers": {"X-A": "b\nBcc: victim@example.com"}}`,
		"unknown-conn": `{"To": "a@example.com", "Connection": "nope"}`,
	}
	wantField := map[string]string{
		"bad-base64": "Attachments[0].ContentData", "crlf-subject": "Subject",
		"crlf-header": `Headers["X-A"]`, "bad-address": "To[0]", "unknown-conn": "Connection",
	}
	for id, body := range cases {
		b.publishRaw(t, []byte(body), id)
	}
	for id := range cases {
		fin, events := b.results.Final(t, id)
		if fin.Status != schema.Status400 || fin.State != schema.StateFailed || len(events) != 1 || fin.Error == "" {
			t.Errorf("%s: events %v, final %+v", id, states(events), fin)
		}
		if f, ok := wantField[id]; ok && (len(fin.Fields) == 0 || fin.Fields[0].Field != f) {
			t.Errorf("%s: fields %+v, want %s", id, fin.Fields, f)
		}
	}
	if srv.Connections() != 0 || srv.MessageCount() != 0 {
		t.Errorf("invalid requests reached SMTP: %d connections, %d messages", srv.Connections(), srv.MessageCount())
	}
	if got := testutil.ToFloat64(b.worker.metrics.Requests.WithLabelValues("invalid")); got != float64(len(cases)) {
		t.Errorf("requests_total{invalid} = %v, want %d", got, len(cases))
	}
}

func TestPipelineSameIDTwiceDeliveredOnce(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{})
	req := map[string]any{"Id": "once", "To": "a@example.com", "Subject": "s", "Body": "b"}
	b.publish(t, req, "once") // inside the duplicate window: JetStream drops it
	b.publish(t, req, "once")
	b.results.Final(t, "once")
	// Outside the window (simulated with another Nats-Msg-Id): the worker's
	// own check finds the Id already sent.
	b.publish(t, req, "once-again")
	jstest.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(b.worker.metrics.Requests.WithLabelValues("duplicate")) == 1
	})
	if n := srv.MessageCount(); n != 1 {
		t.Fatalf("%d deliveries, want 1", n)
	}
}

func TestPipelineReusesConnections(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{Concurrency: 8, Connections: map[string]config.SMTP{"default": {PoolSize: 4}}})
	const n = 200
	for i := range n {
		b.publish(t, map[string]any{"Id": fmt.Sprintf("m%03d", i), "To": "a@example.com", "Subject": "s", "Body": "b"}, "")
	}
	b.results.FinalsAtLeast(t, n, 60*time.Second)
	waitMessages(t, srv, n)
	if c := srv.Connections(); c > 4 {
		t.Fatalf("%d messages used %d SMTP connections, want at most the pool size 4", n, c)
	}
	if got := testutil.ToFloat64(b.worker.metrics.SMTPConnections.WithLabelValues("default")); got < 1 || got > 4 {
		t.Errorf("smtp_connections = %v", got)
	}
}

func TestPipelineMetricsMatchWhatWasSent(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	// One unknown address per request: the first 550 5.1.1 puts its
	// address on the suppression list, and a second request to it would
	// be suppressed (403) instead of refused (404) when it comes later.
	for i := range 3 {
		srv.AddFault(smtptest.Fault{Cmd: "RCPT", Match: fmt.Sprintf("unknown%d@example.com", i), Code: 550, Enhanced: "5.1.1", Message: "no"})
	}
	b := smtpBundle(t, srv, Config{})
	for i := range 10 {
		b.publish(t, map[string]any{"Id": fmt.Sprintf("ok%d", i), "To": "a@example.com", "Body": "b"}, "")
	}
	for i := range 3 {
		b.publish(t, map[string]any{"Id": fmt.Sprintf("bad%d", i), "To": fmt.Sprintf("unknown%d@example.com", i), "Body": "b"}, "")
	}
	b.publishRaw(t, []byte(`{}`), "invalid0")
	b.results.FinalsAtLeast(t, 14, 20*time.Second)
	// A result is counted once its publish is acknowledged, which may be
	// just after subscribers see it.
	jstest.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("failed", "404")) == 3 &&
			testutil.ToFloat64(b.worker.metrics.Results.WithLabelValues("sent", "200")) == 10
	})
	want := `
# HELP jetmail_results_total Result events published, by state and status.
# TYPE jetmail_results_total counter
jetmail_results_total{state="accepted",status="202"} 13
jetmail_results_total{state="failed",status="400"} 1
jetmail_results_total{state="failed",status="404"} 3
jetmail_results_total{state="sent",status="200"} 10
# HELP jetmail_requests_total Requests taken off the stream, by outcome (accepted, invalid, duplicate, scheduled).
# TYPE jetmail_requests_total counter
jetmail_requests_total{outcome="accepted"} 13
jetmail_requests_total{outcome="duplicate"} 0
jetmail_requests_total{outcome="invalid"} 1
jetmail_requests_total{outcome="scheduled"} 0
# HELP jetmail_smtp_attempts_total SMTP delivery attempts, by connection and outcome (ok, transient, permanent).
# TYPE jetmail_smtp_attempts_total counter
jetmail_smtp_attempts_total{connection="default",outcome="ok"} 10
jetmail_smtp_attempts_total{connection="default",outcome="permanent"} 3
`
	if err := testutil.GatherAndCompare(b.reg, strings.NewReader(want), "jetmail_results_total", "jetmail_requests_total", "jetmail_smtp_attempts_total"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.CollectAndCount(b.worker.metrics.DeliveryLatency); got != 1 {
		t.Errorf("delivery latency collected %d series", got)
	}
	if n := srv.MessageCount(); n != 10 {
		t.Errorf("SMTP server has %d messages, metrics say 10", n)
	}
	// Every metric of the contract is exported.
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, name := range []string{"jetmail_requests_total", "jetmail_results_total", "jetmail_smtp_attempts_total", "jetmail_smtp_send_seconds", "jetmail_delivery_latency_seconds", "jetmail_inflight", "jetmail_queue_pending", "jetmail_smtp_connections"} {
		if !have[name] {
			t.Errorf("metric %s is not exported", name)
		}
	}
}

func TestPipelineRestartMidBatchLosesNothing(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: 5 * time.Millisecond}) // keep messages in flight
	b := smtpBundle(t, srv, Config{Concurrency: 4})
	const n = 100
	for i := range n {
		b.publish(t, map[string]any{"Id": fmt.Sprintf("r%03d", i), "To": "a@example.com", "Body": "b"}, "")
	}
	b.results.FinalsAtLeast(t, 10, 20*time.Second)
	b.stop() // graceful stop mid-batch
	b.startWorker(t, Config{Concurrency: 4, Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com"}}})
	b.results.FinalsAtLeast(t, n, 60*time.Second)
	got := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatal(err)
		}
		got[msg.Header.Get("Message-Id")]++
	}
	for i := range n {
		id := fmt.Sprintf("<r%03d.jetmail@example.com>", i)
		if got[id] != 1 {
			t.Errorf("%s delivered %d times", id, got[id])
		}
	}
}
