package worker

import (
	"context"
	"fmt"
	"net"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// This file drives SMTP faults through the whole pipeline: a real
// JetStream server, a real worker and an smtptest server that misbehaves on
// cue. Every test first checks that its fault fired, so that it can fail.

// fastRetry is a realistic retry policy with the delays scaled down to a
// few milliseconds.
func fastRetry(attempts int) RetryPolicy {
	return RetryPolicy{Initial: 5 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxInterval: 40 * time.Millisecond, MaxAttempts: attempts, MaxAge: time.Hour}
}

// faultBundle starts a worker whose default connection is conn, with one
// handler and one pooled session: a handler or a session that a fault left
// stuck would then stop every later message.
func faultBundle(t *testing.T, conn config.SMTP, attempts int) *testBundle {
	t.Helper()
	if conn.From == "" {
		conn.From = "noreply@example.com"
	}
	if conn.PoolSize == 0 {
		conn.PoolSize = 1
	}
	return setup(t, Config{Concurrency: 1, Retry: fastRetry(attempts), Connections: map[string]config.SMTP{"default": conn}})
}

// mailReq is a small valid request.
func mailReq(id string, to ...string) map[string]any {
	if len(to) == 0 {
		to = []string{"rcpt@example.com"}
	}
	return map[string]any{"Id": id, "To": to, "Subject": "fault " + id, "Body": "hello from " + id}
}

// sinkCounts counts the messages an SMTP server received by Message-ID.
func sinkCounts(t testing.TB, msgs []smtptest.Message) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, m := range msgs {
		pm, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatalf("message at the sink does not parse: %v", err)
		}
		got[pm.Header.Get("Message-Id")]++
	}
	return got
}

// waitIdle waits until the worker's consumer holds nothing: no request is
// waiting, in flight or waiting for a retry. After it, a message that was
// wrongly retried would have shown up.
func waitIdle(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	jstest.Eventually(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, "JETMAIL_REQUESTS", "jetmail-worker")
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// faultRow is one case of TestFaultMatrix.
type faultRow struct {
	name   string
	opts   []smtptest.Option
	faults []smtptest.Fault
	// conn adjusts the connection; URL and CAFile are filled in from
	// the server unless conn sets them.
	conn     func(t *testing.T, srv *smtptest.Server) config.SMTP
	attempts int // MaxAttempts; default 5
	want     []string
	sink     int // copies of the message the server must hold
	// fired is the number of times the faults must fire; -1 skips the
	// check (rows without faults check what they need in check).
	fired int
	// errHas must appear in the Error of every deferred and failed
	// event.
	errHas string
	// op is where the failure happened: every deferred and failed
	// event's Error must name it first (after "gave up …: "), once.
	op string
	// chunkedOp, when set, is op on the chunked path.
	chunkedOp string
	// check, when set, runs after the message's final result.
	check func(t *testing.T, srv *smtptest.Server)
	// tls requires every message the server received to have come over
	// TLS.
	tls bool
}

// TestFaultMatrix sends one message through each SMTP fault and checks the
// events, the attempts and what the server received; then, when the fault
// has cleared, a second message must go through at once, which shows that
// the worker's only handler and only session were not left stuck.
func TestFaultMatrix(t *testing.T) {
	t.Parallel()
	reply := func(cmd string, code int, enh, msg string, times int) []smtptest.Fault {
		return []smtptest.Fault{{Cmd: cmd, Code: code, Enhanced: enh, Message: msg, Times: times}}
	}
	noMail := func(t *testing.T, srv *smtptest.Server) {
		if n := srv.Hits("MAIL"); n != 0 {
			t.Errorf("the server saw %d MAIL commands: the client went on in clear", n)
		}
	}
	stall := func(*testing.T, *smtptest.Server) config.SMTP { return config.SMTP{Timeout: 300 * time.Millisecond} }
	rows := []faultRow{
		// Transient replies: deferred, then delivered once the fault stops.
		{name: "greeting 421 once", op: "hello", faults: reply("CONNECT", 421, "4.3.2", "too busy", 1),
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "421"},
		{name: "greeting 421 twice", op: "hello", faults: reply("CONNECT", 421, "4.3.2", "too busy", 2),
			want: []string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "sent/200@3"}, sink: 1, fired: 2, errHas: "too busy"},
		// go-mail falls back to HELO when EHLO fails, so one failure
		// costs nothing and two (EHLO and HELO) cost one attempt.
		{name: "EHLO 451 once falls back to HELO", faults: reply("EHLO", 451, "4.3.0", "later", 1),
			want: []string{"accepted/202@1", "sent/200@1"}, sink: 1, fired: 1},
		{name: "EHLO and HELO 451", op: "hello", faults: reply("EHLO", 451, "4.3.0", "later", 2),
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 2, errHas: "451"},
		{name: "MAIL 451 twice", op: "mail", faults: reply("MAIL", 451, "4.3.0", "later", 2),
			want: []string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "sent/200@3"}, sink: 1, fired: 2, errHas: "4.3.0"},
		{name: "MAIL 421 once", op: "mail", faults: reply("MAIL", 421, "4.4.5", "shutting down", 1),
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "421"},
		{name: "RCPT 450 once", op: "rcpt", faults: reply("RCPT", 450, "4.2.1", "mailbox busy", 1),
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "4.2.1"},
		{name: "DATA command 451 once", op: "data", faults: reply("DATA-START", 451, "4.3.0", "later", 1),
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "451"},
		{name: "end of DATA 452 twice", op: "data-close", faults: reply("DATA", 452, "4.3.1", "disk full", 2),
			want: []string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "sent/200@3"}, sink: 1, fired: 2, errHas: "disk full"},

		// Permanent replies: failed after one attempt, never retried. The
		// faults fire once only, so a wrong retry would be delivered and
		// show as an extra event.
		{name: "MAIL 553 5.1.8", op: "mail", faults: reply("MAIL", 553, "5.1.8", "sender domain does not exist", 1),
			want: []string{"accepted/202@1", "failed/500@1"}, fired: 1, errHas: "553",
			check: func(t *testing.T, srv *smtptest.Server) {
				if srv.Hits("MAIL") != 2 {
					t.Errorf("MAIL sent %d times, want 2 (once for each message)", srv.Hits("MAIL"))
				}
			}},
		{name: "MAIL 550 5.7.1 policy", op: "mail", faults: reply("MAIL", 550, "5.7.1", "sender rejected", 1),
			want: []string{"accepted/202@1", "failed/403@1"}, fired: 1, errHas: "5.7.1"},
		{name: "RCPT 550 5.1.1", op: "rcpt", faults: reply("RCPT", 550, "5.1.1", "no such user", 1),
			want: []string{"accepted/202@1", "failed/404@1"}, fired: 1, errHas: "no such user"},
		{name: "end of DATA 554", op: "data-close", faults: reply("DATA", 554, "", "transaction failed", 1),
			want: []string{"accepted/202@1", "failed/500@1"}, fired: 1, errHas: "554"},
		{name: "DATA command 554", op: "data", faults: reply("DATA-START", 554, "5.5.0", "no valid recipients", 1),
			want: []string{"accepted/202@1", "failed/500@1"}, fired: 1, errHas: "554"},

		// Network failures.
		{name: "connection refused", op: "dial", conn: func(t *testing.T, _ *smtptest.Server) config.SMTP {
			return config.SMTP{URL: "smtp://" + closedPort(t) + "?tls=none"}
		}, attempts: 3,
			want:  []string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "failed/500@3"},
			fired: -1, errHas: "connection refused"},
		{name: "dropped at greeting", op: "hello", faults: []smtptest.Fault{{Cmd: "CONNECT", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1},
		{name: "dropped at EHLO", op: "hello", faults: []smtptest.Fault{{Cmd: "EHLO", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1},
		{name: "dropped at MAIL", op: "mail", faults: []smtptest.Fault{{Cmd: "MAIL", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "mail"},
		{name: "dropped at RCPT", op: "rcpt", faults: []smtptest.Fault{{Cmd: "RCPT", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "rcpt"},
		{name: "dropped at DATA command", op: "data", faults: []smtptest.Fault{{Cmd: "DATA-START", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1},
		{name: "dropped during DATA", faults: []smtptest.Fault{{Cmd: "DATA", Drop: true, Times: 1}},
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1},

		// A stalling server: the attempt times out and is deferred.
		{name: "stall at greeting", op: "hello", faults: []smtptest.Fault{{Cmd: "CONNECT", Delay: 2 * time.Second, Times: 1}}, conn: stall,
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "timeout"},
		// With BDAT the message is written before any reply: a server
		// that stays silent may be working on it, so the stall is
		// uncertain (data-close), not a failure at MAIL or RCPT.
		{name: "stall at MAIL", op: "mail", chunkedOp: "data-close", faults: []smtptest.Fault{{Cmd: "MAIL", Delay: 2 * time.Second, Times: 1}}, conn: stall,
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "timeout"},
		{name: "stall at RCPT", op: "rcpt", chunkedOp: "data-close", faults: []smtptest.Fault{{Cmd: "RCPT", Delay: 2 * time.Second, Times: 1}}, conn: stall,
			want: []string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, sink: 1, fired: 1, errHas: "timeout"},

		// TLS: never send in clear.
		{name: "untrusted certificate, tls=required", op: "tls", opts: []smtptest.Option{smtptest.WithTLS()},
			conn: func(_ *testing.T, srv *smtptest.Server) config.SMTP {
				return config.SMTP{URL: srv.URL() + "?tls=required", CAFile: "-"}
			}, attempts: 2,
			want:  []string{"accepted/202@1", "deferred/202@1", "failed/500@2"},
			fired: -1, errHas: "certificate",
			check: func(t *testing.T, srv *smtptest.Server) {
				noMail(t, srv)
				if srv.Hits("STARTTLS") != 2 {
					t.Errorf("STARTTLS %d times, want 2 (one per attempt)", srv.Hits("STARTTLS"))
				}
			}},
		{name: "untrusted certificate, opportunistic", op: "tls", opts: []smtptest.Option{smtptest.WithTLS()},
			conn: func(_ *testing.T, srv *smtptest.Server) config.SMTP {
				return config.SMTP{URL: srv.URL(), CAFile: "-"}
			}, attempts: 2,
			want:  []string{"accepted/202@1", "deferred/202@1", "failed/500@2"},
			fired: -1, errHas: "certificate",
			check: func(t *testing.T, srv *smtptest.Server) {
				noMail(t, srv)
				if srv.Hits("STARTTLS") != 2 {
					t.Errorf("STARTTLS %d times, want 2", srv.Hits("STARTTLS"))
				}
			}},
		{name: "untrusted certificate, smtps", op: "tls", opts: []smtptest.Option{smtptest.WithImplicitTLS()},
			conn: func(_ *testing.T, srv *smtptest.Server) config.SMTP {
				return config.SMTP{URL: srv.URL(), CAFile: "-"}
			}, attempts: 2,
			want:  []string{"accepted/202@1", "deferred/202@1", "failed/500@2"},
			fired: -1, errHas: "certificate",
			check: func(t *testing.T, srv *smtptest.Server) {
				if srv.Connections() != 2 || srv.Hits("EHLO") != 0 {
					t.Errorf("%d connections, %d EHLO; want 2 handshakes and no command", srv.Connections(), srv.Hits("EHLO"))
				}
			}},
		{name: "tls=required without STARTTLS", op: "tls",
			conn: func(_ *testing.T, srv *smtptest.Server) config.SMTP {
				return config.SMTP{URL: strings.Replace(srv.URL(), "tls=none", "tls=required", 1)}
			}, attempts: 2,
			want:  []string{"accepted/202@1", "deferred/202@1", "failed/500@2"},
			fired: -1, errHas: "STARTTLS",
			check: func(t *testing.T, srv *smtptest.Server) {
				noMail(t, srv)
				if srv.Hits("EHLO") != 2 {
					t.Errorf("EHLO %d times, want 2 (the server was reached on each attempt)", srv.Hits("EHLO"))
				}
			}},
		{name: "STARTTLS with CA file", opts: []smtptest.Option{smtptest.WithTLS()},
			conn: func(_ *testing.T, srv *smtptest.Server) config.SMTP {
				return config.SMTP{URL: srv.URL() + "?tls=required"}
			},
			want: []string{"accepted/202@1", "sent/200@1"}, sink: 1, fired: -1, tls: true,
			check: func(t *testing.T, srv *smtptest.Server) {
				if srv.Hits("STARTTLS") != 1 {
					t.Errorf("STARTTLS %d times", srv.Hits("STARTTLS"))
				}
			}},
		{name: "smtps with CA file", opts: []smtptest.Option{smtptest.WithImplicitTLS()},
			want: []string{"accepted/202@1", "sent/200@1"}, sink: 1, fired: -1, tls: true},
	}
	// Every row runs on the three SMTP paths: MAIL, RCPT, BDAT and the
	// message in one write (smtptest offers PIPELINING and CHUNKING); MAIL,
	// RCPT and DATA pipelined, then the message; and one command at a time.
	// A fault on the DATA command has no BDAT counterpart.
	for _, tc := range rows {
		for _, path := range []smtpPath{chunked, pipelined, sequential} {
			if path == chunked && slices.ContainsFunc(tc.faults, func(f smtptest.Fault) bool { return f.Cmd == "DATA-START" }) {
				continue
			}
			t.Run(string(path)+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				runFaultRow(t, tc, path)
			})
		}
	}
}

// smtpPath is a way of sending a message that a session may take.
type smtpPath string

// The SMTP paths of TestFaultMatrix.
const (
	chunked    smtpPath = "chunked"    // PIPELINING and BDAT: one round trip
	pipelined  smtpPath = "pipelined"  // PIPELINING and DATA
	sequential smtpPath = "sequential" // one command at a time
)

func runFaultRow(t *testing.T, tc faultRow, path smtpPath) {
	srv := smtptest.NewServer(t, tc.opts...)
	for _, f := range tc.faults {
		srv.AddFault(f)
	}
	var conn config.SMTP
	if tc.conn != nil {
		conn = tc.conn(t, srv)
	}
	if conn.URL == "" {
		conn.URL = srv.URL()
	}
	switch {
	case conn.CAFile == "-": // trust nothing but the system roots
		conn.CAFile = ""
	case conn.CAFile == "" && srv.CACertPEM() != nil:
		conn.CAFile = srv.CAFile(t)
	}
	conn.NoPipelining, conn.NoChunking = path == sequential, path != chunked
	if path == chunked && tc.chunkedOp != "" {
		tc.op = tc.chunkedOp
	}
	attempts := tc.attempts
	if attempts == 0 {
		attempts = 5
	}
	b := faultBundle(t, conn, attempts)

	b.publish(t, mailReq("first"), "first")
	fin, _ := b.results.Final(t, "first")
	if tc.fired >= 0 && srv.FaultHits() != tc.fired {
		t.Fatalf("faults fired %d times, want %d", srv.FaultHits(), tc.fired)
	}
	// Once the fault has cleared, the next message goes through at
	// once on the same single handler and session.
	clears := len(tc.faults) > 0 && tc.faults[0].Times > 0
	if clears {
		b.publish(t, mailReq("second", "other@example.com"), "second") // another address: the first may be suppressed now
		fin2, ev2 := b.results.Final(t, "second")
		if diff := cmp.Diff([]string{"accepted/202@1", "sent/200@1"}, states(ev2)); diff != "" || fin2.Status != schema.Status200 {
			t.Errorf("message after the fault cleared: events (-want +got):\n%s", diff)
		}
	}
	waitIdle(t, b.js)

	_, events := b.results.Final(t, "first")
	for _, e := range events {
		t.Logf("%s/%d@%d: %s", e.State, e.Status, e.Attempt, e.Error)
	}
	if diff := cmp.Diff(tc.want, states(events)); diff != "" {
		t.Fatalf("events (-want +got):\n%s\nlast error: %s", diff, fin.Error)
	}
	for _, e := range events {
		if e.State == schema.StateDeferred && (e.NextAttemptAt == nil || e.Error == "") {
			t.Errorf("deferred event without NextAttemptAt or Error: %+v", e)
		}
		if e.State != schema.StateDeferred && e.State != schema.StateFailed {
			continue
		}
		if !strings.Contains(e.Error, tc.errHas) {
			t.Errorf("%s event Error %q does not mention %q", e.State, e.Error, tc.errHas)
		}
		if tc.op == "" {
			continue
		}
		_, reason, _ := strings.Cut(e.Error, "s: ") // after "gave up after n attempts over 1s: "
		if !strings.HasPrefix(e.Error, "gave up") {
			reason = e.Error
		}
		// (crypto/tls's own messages start with "tls: " too.)
		if !strings.HasPrefix(reason, tc.op+": ") || tc.op != "tls" && strings.HasPrefix(reason, tc.op+": "+tc.op+": ") {
			t.Errorf("%s event Error %q does not say once, first, that it happened at %s", e.State, e.Error, tc.op)
		}
	}
	if len(tc.faults) > 0 && tc.faults[0].Code >= 500 && (fin.Smtp == nil || fin.Smtp.Code != tc.faults[0].Code) {
		t.Errorf("final result carries SMTP reply %+v, want code %d", fin.Smtp, tc.faults[0].Code)
	}

	msgs := srv.Messages()
	counts := sinkCounts(t, msgs)
	if got := counts[fin.MessageId]; got != tc.sink {
		t.Errorf("the server holds %d copies of the message, want %d", got, tc.sink)
	}
	if clears && counts["<second.jetmail@example.com>"] != 1 {
		t.Errorf("the server holds %d copies of the second message, want 1", counts["<second.jetmail@example.com>"])
	}
	for _, m := range msgs {
		if tc.tls && !m.TLS {
			t.Errorf("message received in clear over connection %d", m.Conn)
		}
	}
	if tc.check != nil {
		tc.check(t, srv)
	}
}

// TestFaultDropAfterDataIsNotADuplicate: the server answers 250 to the end
// of DATA and then drops the connection. All jetmail can know is the 250,
// so the message is sent, once. The dead session is found when the next
// message tries to use it: that is pool hygiene (redial once at once), not
// a failed attempt, so the next message is neither deferred nor repeated.
func TestFaultDropAfterDataIsNotADuplicate(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	b := faultBundle(t, config.SMTP{URL: srv.URL()}, 5)
	b.publish(t, mailReq("before"), "before")
	if fin, _ := b.results.Final(t, "before"); fin.Status != schema.Status200 {
		t.Fatalf("first message: %+v", fin)
	}
	// The next command on the pooled session is the next MAIL: drop there.
	srv.AddFault(smtptest.Fault{Cmd: "MAIL", Drop: true, Times: 1})
	b.publish(t, mailReq("after"), "after")
	fin, events := b.results.Final(t, "after")
	if srv.FaultHits() != 1 {
		t.Fatalf("fault fired %d times, want 1", srv.FaultHits())
	}
	if diff := cmp.Diff([]string{"accepted/202@1", "sent/200@1"}, states(events)); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	counts := sinkCounts(t, srv.Messages())
	if counts["<before.jetmail@example.com>"] != 1 || counts[fin.MessageId] != 1 || len(counts) != 2 {
		t.Errorf("messages at the server by Message-ID: %v, want each once", counts)
	}
	if srv.Connections() != 2 {
		t.Errorf("%d connections, want 2 (the dropped one and its replacement)", srv.Connections())
	}
	if got := testutil.ToFloat64(b.worker.metrics.SMTPAttempts.WithLabelValues("default", "transient")); got != 0 {
		t.Errorf("smtp_attempts_total{transient} = %v, want 0: a redial is not an attempt", got)
	}
}

// TestFaultTimeoutAfterDataIsTheDuplicateWindow: the server takes the whole
// message and then stalls past the client's timeout before its 250 (then
// stores the message anyway). jetmail cannot know whether the message was
// taken, so it retries: this is SMTP's unavoidable duplicate (DESIGN.md,
// "SMTP itself is not idempotent"). The test pins it down: exactly one
// extra copy, and the result says sent once.
func TestFaultTimeoutAfterDataIsTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Delay: time.Second, Times: 1})
	b := faultBundle(t, config.SMTP{URL: srv.URL(), Timeout: 300 * time.Millisecond}, 5)
	b.publish(t, mailReq("late"), "late")
	fin, events := b.results.Final(t, "late")
	if srv.FaultHits() != 1 {
		t.Fatalf("fault fired %d times", srv.FaultHits())
	}
	if diff := cmp.Diff([]string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, states(events)); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if !strings.Contains(events[1].Error, "timeout") {
		t.Errorf("deferred Error %q does not mention the timeout", events[1].Error)
	}
	msgs := waitMessages(t, srv, 2) // the retry, then the stalled copy
	if n := sinkCounts(t, msgs)[fin.MessageId]; n != 2 {
		t.Errorf("%d copies, want 2", n)
	}
	t.Logf("timeout after the end of DATA: %d copies delivered (SMTP's own duplicate window)", len(msgs))
}

// TestFaultSlowCommandsWithinTimeout: config.SMTP.Timeout bounds each
// command, not the whole transaction, so a server that is slow on every
// command but never slower than Timeout gets the message on the first try,
// with and without PIPELINING.
func TestFaultSlowCommandsWithinTimeout(t *testing.T) {
	t.Parallel()
	for _, path := range []smtpPath{chunked, pipelined, sequential} {
		t.Run(string(path), func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t)
			for _, cmd := range []string{"MAIL", "RCPT", "DATA-START", "DATA"} {
				srv.AddFault(smtptest.Fault{Cmd: cmd, Delay: 150 * time.Millisecond})
			}
			b := faultBundle(t, config.SMTP{URL: srv.URL(), Timeout: 400 * time.Millisecond,
				NoPipelining: path == sequential, NoChunking: path != chunked}, 2)
			b.publish(t, mailReq("slow", "a@example.com", "b@example.com"), "slow")
			fin, events := b.results.Final(t, "slow")
			want := 5 // MAIL, two RCPT, DATA, the end of the message
			if path == chunked {
				want = 4 // no DATA command
			}
			if srv.FaultHits() < want {
				t.Fatalf("faults fired %d times, want at least %d", srv.FaultHits(), want)
			}
			if diff := cmp.Diff([]string{"accepted/202@1", "sent/200@1"}, states(events)); diff != "" {
				t.Fatalf("events (-want +got):\n%s\nerror: %s", diff, fin.Error)
			}
		})
	}
}

// TestFaultPartialRecipients: one of three recipients is unknown. The
// other two get the message; the result is 200 and lists the refused one
// with 404. On both SMTP paths.
func TestFaultPartialRecipients(t *testing.T) {
	t.Parallel()
	for _, noPipelining := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoPipelining=%v", noPipelining), func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t)
			srv.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "gone@example.com", Code: 550, Enhanced: "5.1.1", Message: "no such user"})
			b := faultBundle(t, config.SMTP{URL: srv.URL(), NoPipelining: noPipelining}, 5)
			b.publish(t, mailReq("partial", "a@example.com", "gone@example.com", "b@example.com"), "partial")
			fin, events := b.results.Final(t, "partial")
			if srv.FaultHits() != 1 {
				t.Fatalf("fault fired %d times, want 1", srv.FaultHits())
			}
			if diff := cmp.Diff([]string{"accepted/202@1", "sent/200@1"}, states(events)); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			want := []schema.RecipientResult{{Address: "gone@example.com", Status: schema.Status404, Code: 550, Message: "5.1.1 no such user"}}
			if diff := cmp.Diff(want, fin.Recipients); diff != "" {
				t.Errorf("Recipients (-want +got):\n%s", diff)
			}
			msgs := waitMessages(t, srv, 1)
			if diff := cmp.Diff([]string{"a@example.com", "b@example.com"}, msgs[0].To); diff != "" {
				t.Errorf("envelope recipients (-want +got):\n%s", diff)
			}
			waitIdle(t, b.js)
			if n := srv.MessageCount(); n != 1 {
				t.Errorf("%d messages at the server, want 1", n)
			}
		})
	}
}

// TestFaultRelayStallsOneMessage: the relay takes the whole of one message
// and then stalls longer than the connection's timeout before it answers
// (and keeps the message), while other messages go through other
// sessions. The stalled message is deferred, marked Uncertain, and sent on
// the retry; the others finish while it is still stalled, and one copy of
// the stalled message is the relay's (SMTP's unavoidable duplicate).
func TestFaultRelayStallsOneMessage(t *testing.T) {
	t.Parallel()
	const timeout, stall = 3 * time.Second, 5 * time.Second
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "DATA", Match: "stalled@example.com", Delay: stall, Times: 1})
	b := smtpBundle(t, srv, Config{Concurrency: 4, Retry: fastRetry(5),
		Connections: map[string]config.SMTP{"default": {Timeout: timeout, PoolSize: 4}}})
	b.results = jstest.StoredResults(t, b.js, "")

	b.publish(t, mailReq("stalled", "stalled@example.com"), "stalled")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.WaitFaultHits(ctx, 1); err != nil {
		t.Fatal(err)
	}
	stalledAt := time.Now()
	const others = 30
	var ids []string
	for i := range others {
		id := fmt.Sprintf("flow%02d", i)
		ids = append(ids, id)
		b.publish(t, mailReq(id), id)
	}
	b.results.WaitUntil(t, 2*time.Minute, "the other messages", func(events func(string) []schema.Result) bool {
		for _, id := range ids {
			if ev := events(id); len(ev) == 0 || !ev[len(ev)-1].Final() {
				return false
			}
		}
		return true
	})
	othersDone := time.Since(stalledAt)
	if ev := b.results.Events("stalled"); len(ev) != 1 || ev[0].State != schema.StateAccepted {
		t.Fatalf("the other messages finished %v into the stall, the stalled one has events %v: want only accepted while it stalls", othersDone, states(ev))
	}
	for _, id := range ids {
		if fin, _ := b.results.Final(t, id); fin.State != schema.StateSent || fin.Attempt != 1 {
			t.Errorf("%s: %+v, want sent on the first attempt", id, fin)
		}
	}

	fin, events := b.results.Final(t, "stalled")
	if diff := cmp.Diff([]string{"accepted/202@1", "deferred/202@1", "sent/200@2"}, states(events)); diff != "" {
		t.Fatalf("stalled message: events (-want +got):\n%s", diff)
	}
	if d := events[1]; !d.Uncertain || !strings.Contains(d.Error, "timeout") {
		t.Errorf("deferred event %+v: want Uncertain and a timeout in Error", d)
	}
	msgs := waitMessages(t, srv, others+2) // the retry, and the stalled copy once the stall is over
	counts := sinkCounts(t, msgs)
	for _, id := range ids {
		if counts["<"+id+".jetmail@example.com>"] != 1 {
			t.Errorf("%s: %d copies", id, counts["<"+id+".jetmail@example.com>"])
		}
	}
	if got := testutil.ToFloat64(b.worker.metrics.Uncertain.WithLabelValues("default")); got != 1 {
		t.Errorf("jetmail_uncertain_total = %v, want 1", got)
	}
	t.Logf("one message stalled %s, past the %s timeout: the %d others finished %v into the stall; it was sent on attempt %d; %d copies of it at the relay (one is the stalled transaction's)",
		stall, timeout, others, othersDone.Round(time.Millisecond), fin.Attempt, counts[fin.MessageId])
}
