package worker

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestPartialRecipientRetried: a recipient refused with 451 while the
// other took the message is retried alone, with the same Message-ID, and
// the accepted one is never sent again; the deferred event lists both, and
// the final one comes when none is left waiting. Across a worker restart,
// since the state travels in the result event, not in memory.
func TestPartialRecipientRetried(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "later@example.com", Times: 2, Code: 451, Enhanced: "4.2.0", Message: "greylisted"})
	b := smtpBundle(t, srv, Config{})
	b.publish(t, map[string]any{"Id": "part-1", "To": "now@example.com;later@example.com"}, "part-1")
	b.results.WaitUntil(t, 10*time.Second, "the deferral", func(events func(string) []schema.Result) bool {
		for _, ev := range events("part-1") {
			if ev.State == schema.StateDeferred {
				return true
			}
		}
		return false
	})
	// A new worker takes the retry: nothing of the first one's memory.
	b.stop()
	b.startWorker(t, Config{Connections: map[string]config.SMTP{"default": {URL: srv.URL(), From: "noreply@example.com"}}})
	fin, events := b.results.Final(t, "part-1")
	if srv.FaultHits() != 2 {
		t.Fatalf("the 451 fired %d times, want 2", srv.FaultHits())
	}
	want := []string{"accepted/202@1", "deferred/202@1", "deferred/202@2", "sent/200@3"}
	if got := states(events); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	def := events[1]
	if len(def.Recipients) != 2 || def.Recipients[0] != (schema.RecipientResult{Address: "now@example.com", Status: 200}) ||
		def.Recipients[1].Address != "later@example.com" || def.Recipients[1].Status != 202 || def.Recipients[1].Code != 451 {
		t.Errorf("deferred event's Recipients %+v, want now 200 and later 202 with its reply", def.Recipients)
	}
	if len(fin.Recipients) != 0 {
		t.Errorf("final Recipients %+v, want none: both have it", fin.Recipients)
	}
	msgs := srv.Messages()
	if len(msgs) != 2 || fmt.Sprint(msgs[0].To) != "[now@example.com]" || fmt.Sprint(msgs[1].To) != "[later@example.com]" {
		t.Fatalf("messages at the SMTP server: %+v, want one to each recipient", msgs)
	}
	if a, b := parseMessage(t, msgs[0].Data).Header.Get("Message-Id"), parseMessage(t, msgs[1].Data).Header.Get("Message-Id"); a != b {
		t.Errorf("the retry has Message-ID %s, the first copy %s", b, a)
	}
}

// TestPartialRecipientExhausted: a recipient still refused when the
// attempts run out is listed with 500 and its last reply; the message is
// sent, since another recipient has it.
func TestPartialRecipientExhausted(t *testing.T) {
	t.Parallel()
	srv := smtptest.NewServer(t)
	srv.AddFault(smtptest.Fault{Cmd: "RCPT", Match: "never@example.com", Code: 452, Enhanced: "4.2.2", Message: "mailbox full"})
	b := smtpBundle(t, srv, Config{Retry: fastRetry(3)})
	b.publish(t, map[string]any{"Id": "part-2", "To": "ok@example.com", "Cc": "never@example.com"}, "part-2")
	fin, events := b.results.Final(t, "part-2")
	if fin.State != schema.StateSent || len(events) != 4 {
		t.Fatalf("events %v, want accepted, two deferred, sent", states(events))
	}
	if r := fin.Recipients; len(r) != 1 || r[0].Address != "never@example.com" || r[0].Status != 500 || r[0].Code != 452 || r[0].Message != "4.2.2 mailbox full" {
		t.Errorf("final Recipients %+v, want never@example.com at 500 with the 452", r)
	}
	if n := srv.MessageCount(); n != 1 {
		t.Errorf("%d messages at the SMTP server, want 1: the accepted recipient is never sent again", n)
	}
}

// TestUncertainOutcome: the relay stalls after the final "." of DATA
// longer than the SMTP timeout, then takes the message anyway. With the
// default on_uncertain: retry the message is sent again (the same
// Message-ID) and the deferred event says Uncertain; with assume-sent it
// ends sent at once, Uncertain, and is not sent again.
func TestUncertainOutcome(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{config.OnUncertainRetry, config.OnUncertainAssumeSent} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			srv := smtptest.NewServer(t)
			srv.AddFault(smtptest.Fault{Cmd: "DATA", Times: 1, Delay: 1500 * time.Millisecond})
			b := smtpBundle(t, srv, Config{Connections: map[string]config.SMTP{"default": {Timeout: 500 * time.Millisecond, OnUncertain: policy}}})
			b.publish(t, map[string]any{"Id": "unc-1", "To": "a@example.com"}, "unc-1")
			fin, events := b.results.Final(t, "unc-1")
			if err := srv.WaitFaultHits(t.Context(), 1); err != nil {
				t.Fatal(err)
			}
			if got := testutil.ToFloat64(b.worker.metrics.Uncertain.WithLabelValues("default")); got != 1 {
				t.Errorf("uncertain_total = %v, want 1", got)
			}
			switch policy {
			case config.OnUncertainRetry:
				if len(events) != 3 || events[1].State != schema.StateDeferred || !events[1].Uncertain || fin.State != schema.StateSent || fin.Uncertain {
					t.Fatalf("events %+v, want accepted, deferred (Uncertain), sent", events)
				}
				msgs, err := srv.WaitMessages(t.Context(), 2)
				if err != nil {
					t.Fatal(err)
				}
				if parseMessage(t, msgs[0].Data).Header.Get("Message-Id") != parseMessage(t, msgs[1].Data).Header.Get("Message-Id") {
					t.Error("the copy sent again has another Message-ID")
				}
			default:
				if len(events) != 2 || fin.State != schema.StateSent || !fin.Uncertain {
					t.Fatalf("events %+v, want accepted then sent (Uncertain)", events)
				}
				jstest.Eventually(t, 5*time.Second, func() bool { return srv.MessageCount() == 1 })
				time.Sleep(200 * time.Millisecond) // nothing may follow; nothing signals what does not happen
				if n := srv.MessageCount(); n != 1 {
					t.Errorf("%d copies at the SMTP server, want 1 (at most once)", n)
				}
			}
		})
	}
}

// TestOversizedRequestGetsAResult: a request over --max-request-bytes that
// NATS still carries is stored (the request stream has no size limit of
// its own) and answered with its 400 result, so that even a publisher
// that does not wait for the JetStream ack hears of it.
func TestOversizedRequestGetsAResult(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Limits: schema.Limits{MaxRequestBytes: 2000}})
	body := strings.Repeat("x", 5000)
	b.publish(t, map[string]any{"Id": "big-1", "To": "a@example.com", "Body": body}, "big-1")
	fin, _ := b.results.Final(t, "big-1")
	if fin.Status != schema.Status400 || len(fin.Fields) != 1 || !strings.Contains(fin.Fields[0].Message, "more than the limit of 2000") {
		t.Errorf("final %+v, want 400 for the size", fin)
	}
}

// TestInvalidRequestKeepsItsId: a request that Decode refuses (a value of
// the wrong type) or that is over --max-request-bytes, published without
// a Nats-Msg-Id, gets its 400 under the Id of its own body (contract §2:
// the Id key whenever the body can be parsed), with its Metadata and
// BatchId where it was under the size limit.
func TestInvalidRequestKeepsItsId(t *testing.T) {
	t.Parallel()
	b := setup(t, Config{Limits: schema.Limits{MaxRequestBytes: 3000}})
	b.publishRaw(t, []byte(`{"Id":"typ-1","To":5,"Metadata":{"tenant":"acme","n":7},"BatchId":"b-1"}`), "")
	b.publishRaw(t, []byte(`{"Id":"typ-2","To":"a@example.com","Attachments":[{"FileName":"a"}],"Metadata":{"k":"v"}}`), "")
	b.publishRaw(t, []byte(`{"Id":"big-2","To":"a@example.com","Metadata":{"k":"v"},"Body":"`+strings.Repeat("x", 5000)+`"}`), "")
	for id, want := range map[string]map[string]string{
		"typ-1": {"tenant": "acme"}, // the entry of the wrong type is left out
		"typ-2": {"k": "v"},
		"big-2": nil, // not echoed from an oversized payload
	} {
		fin, events := b.results.Final(t, id)
		if fin.Status != schema.Status400 || len(events) != 1 {
			t.Errorf("%s: events %v, final %+v; want one 400", id, states(events), fin)
		}
		if !maps.Equal(fin.Metadata, want) {
			t.Errorf("%s: Metadata %v, want %v", id, fin.Metadata, want)
		}
		if id == "typ-1" && fin.BatchId != "b-1" {
			t.Errorf("%s: BatchId %q, want b-1", id, fin.BatchId)
		}
	}
}
