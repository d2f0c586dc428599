package worker

import (
	"io"
	"slices"
	"testing"
	"time"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// TestDecide is the decision table of a delivery (decide.go): one case per
// row at least, each checking the row, the event, the dead letter, the ack
// verb and the requests_total outcome. Every row of allRows must have a
// case, so a row added to decide without a case here fails.
func TestDecide(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Initial: time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 3, MaxAge: 24 * time.Hour}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Second)
	transient := Classify(withOp(OpRcpt, reply(451, "4.3.0 later")))
	auth := Classify(withOp(OpAuth, reply(535, "5.7.8 no")))
	permanent := Classify(withOp(OpRcpt, reply(550, "5.1.1 unknown")))
	uncertain := Classify(withOp(OpDataClose, io.EOF))
	invalid := &schema.ValidationError{Fields: []schema.FieldError{{Field: "To[0]", Message: "not a valid email address"}}}
	forbidden := &config.SenderNotAllowedError{From: "evil@example.org", Connection: "default"}
	sent := Delivery{Reply: &schema.SMTPReply{Code: 250, Message: "queued"}}
	later := t0.Add(24 * time.Hour)
	envelope := &schema.Envelope{From: "a@example.com", Recipients: []string{"b@example.com"}, Subject: "s"}

	// base returns the facts of attempt n, first seen at t0; mod changes
	// them.
	base := func(n int, mod func(*facts)) facts {
		f := facts{base: schema.Result{Id: "x", Attempt: n}, attempt: n, firstSeen: t0, now: now}
		mod(&f)
		return f
	}
	type want struct {
		row     row
		state   schema.State // "" for no event
		status  schema.Status
		dead    bool
		verb    ackVerb
		outcome string
	}
	tests := []struct {
		name string
		f    facts
		want want
	}{
		{"a message without JetStream metadata", facts{noMetadata: true},
			want{row: rowNoMetadata, verb: verbTerm}},
		{"taken while the worker stops", base(1, func(f *facts) { f.shutdown = true }),
			want{row: rowShutdownIdle, verb: verbNak}},
		{"invalid request", base(1, func(f *facts) { f.invalid = invalid }),
			want{rowInvalid, schema.StateFailed, 400, false, verbTerm, "invalid"}},
		{"invalid wins over a stored sent event", base(2, func(f *facts) {
			f.invalid = invalid
			f.last = &lastEvent{state: schema.StateSent}
		}), want{rowInvalid, schema.StateFailed, 400, false, verbTerm, "invalid"}},
		{"already sent", base(2, func(f *facts) { f.last = &lastEvent{state: schema.StateSent} }),
			want{row: rowDuplicateSent, verb: verbAck, outcome: "duplicate"}},
		{"already sent, sender now not allowed: still a duplicate", base(2, func(f *facts) {
			f.last = &lastEvent{state: schema.StateSent}
			f.invalid = forbidden
		}), want{row: rowDuplicateSent, verb: verbAck, outcome: "duplicate"}},
		{"final failure of this request already stored", base(4, func(f *facts) {
			f.last = &lastEvent{state: schema.StateFailed, sameRequest: true}
		}), want{row: rowAlreadyFinal, verb: verbTerm, outcome: "duplicate"}},
		{"an earlier publish failed: send again", base(1, func(f *facts) {
			f.last = &lastEvent{state: schema.StateFailed}
		}), want{rowSend, schema.StateAccepted, 202, false, verbSend, "accepted"}},
		{"already cancelled (by a canceller or another worker)", base(2, func(f *facts) {
			f.last = &lastEvent{state: schema.StateCancelled}
		}), want{row: rowAlreadyGone, verb: verbTerm}},
		{"already cancelled wins over a cancellation mark", base(2, func(f *facts) {
			f.last = &lastEvent{state: schema.StateCancelled}
			f.cancelled = true
		}), want{row: rowAlreadyGone, verb: verbTerm}},
		{"cancellation mark", base(1, func(f *facts) { f.cancelled = true }),
			want{rowCancelled, schema.StateCancelled, 410, false, verbTerm, ""}},
		{"cancellation mark on a retry", base(3, func(f *facts) {
			f.cancelled = true
			f.last = &lastEvent{state: schema.StateDeferred}
		}), want{rowCancelled, schema.StateCancelled, 410, false, verbTerm, ""}},
		{"cancellation mark wins over the schedule", base(1, func(f *facts) {
			f.cancelled = true
			f.sendAt = &later
		}), want{rowCancelled, schema.StateCancelled, 410, false, verbTerm, ""}},
		{"invalid wins over a cancellation mark", base(1, func(f *facts) {
			f.invalid = invalid
			f.cancelled = true
		}), want{rowInvalid, schema.StateFailed, 400, false, verbTerm, "invalid"}},
		{"a cancellation mark that came too late: sent", base(1, func(f *facts) {
			f.attempted, f.delivery, f.cancelled = true, sent, true
		}), want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"sender not allowed", base(1, func(f *facts) { f.invalid = forbidden }),
			want{rowForbidden, schema.StateFailed, 403, true, verbTerm, "invalid"}},
		{"delivered more often than MaxAttempts", base(4, func(*facts) {}),
			want{rowOverAttempts, schema.StateFailed, 500, true, verbTerm, ""}},
		{"SendAt ahead: scheduled", base(1, func(f *facts) {
			f.sendAt, f.envelope = &later, envelope
		}), want{rowScheduled, schema.StateScheduled, 202, false, verbAck, "scheduled"}},
		{"every recipient suppressed: 403, no dead letter", base(1, func(f *facts) {
			f.suppressed = []schema.RecipientResult{{Address: "b@x", Status: 403, Suppressed: true, Reason: "bounce"}}
		}), want{rowSuppressed, schema.StateFailed, 403, false, verbTerm, ""}},
		{"some recipients suppressed: send to the others", base(1, func(f *facts) {
			f.attemptedTo = []string{"a@x"}
			f.suppressed = []schema.RecipientResult{{Address: "b@x", Status: 403, Suppressed: true, Reason: "manual"}}
		}), want{rowSend, schema.StateAccepted, 202, false, verbSend, "accepted"}},
		{"the waiting recipient is now suppressed, another took it: send (nothing)", base(2, func(f *facts) {
			f.last = &lastEvent{state: schema.StateDeferred}
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "b@x", Status: 202}}
			f.suppressed = []schema.RecipientResult{{Address: "b@x", Status: 403, Suppressed: true, Reason: "manual"}}
		}), want{row: rowSend, verb: verbSend}},
		{"the waiting recipient is now suppressed, none took it: 403", base(2, func(f *facts) {
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 404, Code: 550}, {Address: "b@x", Status: 202}}
			f.suppressed = []schema.RecipientResult{{Address: "b@x", Status: 403, Suppressed: true, Reason: "manual"}}
		}), want{rowSuppressed, schema.StateFailed, 403, false, verbTerm, ""}},
		{"first attempt: accepted", base(1, func(f *facts) { f.envelope = envelope }),
			want{rowSend, schema.StateAccepted, 202, false, verbSend, "accepted"}},
		{"a retry: no second accepted", base(2, func(f *facts) { f.last = &lastEvent{state: schema.StateDeferred} }),
			want{row: rowSend, verb: verbSend}},
		{"a later delivery with no event stored yet: accepted", base(2, func(*facts) {}),
			want{rowSend, schema.StateAccepted, 202, false, verbSend, "accepted"}},
		{"grace period ran out during the send", base(1, func(f *facts) {
			f.attempted, f.shutdown, f.failure = true, true, transient
		}), want{row: rowShutdown, verb: verbNak}},
		{"sent", base(1, func(f *facts) { f.attempted, f.delivery = true, sent }),
			want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"sent on the last attempt", base(3, func(f *facts) { f.attempted, f.delivery = true, sent }),
			want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"one recipient refused for now, another took it", base(1, func(f *facts) {
			f.attempted, f.attemptedTo = true, []string{"a@x", "b@x"}
			f.delivery = Delivery{Reply: sent.Reply, Rejected: []schema.RecipientResult{{Address: "b@x", Status: 202, Code: 451}}}
		}), want{rowPartial, schema.StateDeferred, 202, false, verbNakDelay, ""}},
		{"the waiting recipient takes it on the retry", base(2, func(f *facts) {
			f.attempted, f.attemptedTo, f.delivery = true, []string{"b@x"}, sent
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "b@x", Status: 202}}
		}), want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"the waiting recipient refuses again: still waiting", base(2, func(f *facts) {
			f.attempted, f.attemptedTo, f.failure = true, []string{"b@x"}, transient
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "b@x", Status: 202}}
		}), want{rowPartial, schema.StateDeferred, 202, false, verbNakDelay, ""}},
		{"the waiting recipient is still refused when the attempts run out: sent", base(3, func(f *facts) {
			f.attempted, f.attemptedTo, f.failure = true, []string{"b@x"}, transient
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "b@x", Status: 202}}
		}), want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"the waiting recipient is unknown: sent", base(2, func(f *facts) {
			f.attempted, f.attemptedTo, f.failure = true, []string{"b@x"}, permanent
			f.prior = []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "b@x", Status: 202}}
		}), want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"uncertain: retried, marked", base(1, func(f *facts) {
			f.attempted, f.attemptedTo, f.failure = true, []string{"a@x"}, uncertain
		}), want{rowDeferred, schema.StateDeferred, 202, false, verbNakDelay, ""}},
		{"uncertain with assume-sent: sent, marked", base(1, func(f *facts) {
			f.attempted, f.attemptedTo, f.failure, f.assumeSent = true, []string{"a@x"}, uncertain, true
		}), want{rowSent, schema.StateSent, 200, false, verbAck, ""}},
		{"transient, attempts left", base(1, func(f *facts) { f.attempted, f.failure = true, transient }),
			want{rowDeferred, schema.StateDeferred, 202, false, verbNakDelay, ""}},
		{"auth, attempts left", base(2, func(f *facts) { f.attempted, f.failure = true, auth }),
			want{rowDeferred, schema.StateDeferred, 202, false, verbNakDelay, ""}},
		{"transient, last attempt", base(3, func(f *facts) { f.attempted, f.failure = true, transient }),
			want{rowExhausted, schema.StateFailed, 500, true, verbTerm, ""}},
		{"auth, last attempt", base(3, func(f *facts) { f.attempted, f.failure = true, auth }),
			want{rowExhausted, schema.StateFailed, 401, true, verbTerm, ""}},
		{"transient, too old", base(1, func(f *facts) {
			f.attempted, f.failure = true, transient
			f.now = t0.Add(24*time.Hour - 30*time.Second)
		}), want{rowExhausted, schema.StateFailed, 500, true, verbTerm, ""}},
		{"permanent", base(1, func(f *facts) { f.attempted, f.failure = true, permanent }),
			want{rowPermanent, schema.StateFailed, 404, true, verbTerm, ""}},
	}
	covered := map[row]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.f, p)
			got := want{row: d.row, dead: d.dead, verb: d.verb, outcome: d.outcome}
			if d.event != nil {
				got.state, got.status = d.event.State, d.event.Status
				if d.event.Id != "x" || !d.event.Time.Equal(now) && tc.f.now.Equal(now) {
					t.Errorf("event %+v lacks the base fields or the time", d.event)
				}
			}
			if got != tc.want {
				t.Fatalf("decision %+v\n want %+v", got, tc.want)
			}
			if tc.f.failure != nil && tc.f.failure.Uncertain && (d.event == nil || !d.event.Uncertain) {
				t.Errorf("the event after an uncertain attempt is not marked Uncertain: %+v", d.event)
			}
			switch d.row {
			case rowDeferred:
				if d.event.NextAttemptAt == nil || d.delay != d.event.NextAttemptAt.Sub(tc.f.now) || d.delay <= 0 {
					t.Errorf("deferred without a consistent NextAttemptAt: delay %s, event %+v", d.delay, d.event)
				}
			case rowInvalid:
				if len(d.event.Fields) != 1 || d.event.Error == "" {
					t.Errorf("invalid event without its fields and error: %+v", d.event)
				}
			case rowScheduled:
				if !d.park || d.event.SendAt == nil || !d.event.SendAt.Equal(later) || d.event.Envelope != envelope {
					t.Errorf("scheduled without parking, SendAt or Envelope: %+v, park %v", d.event, d.park)
				}
			case rowSend:
				if d.event != nil && d.event.Envelope == nil && tc.f.envelope != nil {
					t.Errorf("accepted without its Envelope: %+v", d.event)
				}
			case rowSent:
				if d.event.Smtp == nil && tc.f.failure == nil {
					t.Errorf("sent event without the server's reply: %+v", d.event)
				}
				for _, r := range d.event.Recipients {
					if r.Status == 202 {
						t.Errorf("a final event with a waiting recipient: %+v", d.event.Recipients)
					}
				}
			case rowPartial:
				var st []schema.Status
				for _, r := range d.event.Recipients {
					st = append(st, r.Status)
				}
				if !slices.Contains(st, 200) || !slices.Contains(st, 202) || d.event.NextAttemptAt == nil {
					t.Errorf("partial deferral without the accepted and the waiting recipients: %+v", d.event)
				}
			case rowSuppressed:
				if n := len(d.event.Recipients); n == 0 || !d.event.Recipients[n-1].Suppressed || d.event.Recipients[n-1].Reason == "" {
					t.Errorf("all-suppressed event does not list the suppressed recipient: %+v", d.event.Recipients)
				}
				if len(d.bounced) > 0 {
					t.Errorf("no attempt, yet bounces: %+v", d.bounced)
				}
			case rowPermanent, rowExhausted:
				if d.event.Smtp == nil || d.event.Error == "" {
					t.Errorf("failed event without its reply and reason: %+v", d.event)
				}
			}
		})
		covered[decide(tc.f, p).row] = true
	}
	for _, r := range allRows {
		if !covered[r] {
			t.Errorf("row %q has no case", r)
		}
	}
	if len(allRows) != len(slices.Compact(slices.Sorted(slices.Values(allRows)))) {
		t.Error("allRows lists a row twice")
	}
}

// TestDecideRecipients checks what the events say about each recipient
// when some are suppressed, and which recipients decide names as bounced.
func TestDecideRecipients(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Initial: time.Minute, Multiplier: 2, MaxInterval: time.Hour, MaxAttempts: 3, MaxAge: 24 * time.Hour}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	sent := Delivery{Reply: &schema.SMTPReply{Code: 250, Message: "queued"}}
	supp := schema.RecipientResult{Address: "s@x", Status: 403, Suppressed: true, Reason: "unsubscribe"}
	rcpt := func(addr string, code int, text string) schema.RecipientResult {
		c := Classify(withOp(OpRcpt, reply(code, text)))
		return recipientResult(addr, c)
	}
	for _, tc := range []struct {
		name    string
		f       facts
		row     row
		listed  []string // the addresses of the event's Recipients, in order
		bounced []string
	}{
		{name: "sent, one suppressed: listed as not having it",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"a@x"}, delivery: sent, suppressed: []schema.RecipientResult{supp}},
			row: rowSent, listed: []string{"s@x"}},
		{name: "a waiting recipient suppressed on the retry: sent, listed once",
			f: facts{attempt: 2, attempted: true, delivery: sent, suppressed: []schema.RecipientResult{{Address: "S@x", Status: 403, Suppressed: true, Reason: "manual"}},
				prior: []schema.RecipientResult{{Address: "a@x", Status: 200}, {Address: "s@x", Status: 202}}},
			row: rowSent, listed: []string{"S@x"}},
		{name: "550 5.1.1 at RCPT beside an accepted recipient: bounced",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"a@x", "u@x"}, delivery: Delivery{Reply: sent.Reply, Rejected: []schema.RecipientResult{rcpt("u@x", 550, "5.1.1 no such user")}}},
			row: rowSent, listed: []string{"u@x"}, bounced: []string{"u@x"}},
		{name: "554 5.1.2 alone: bounced",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(554, "5.1.2 bad destination")}})},
			row: rowPermanent, listed: []string{"u@x"}, bounced: []string{"u@x"}},
		{name: "553 5.1.3 with a suppressed one: both listed, one bounced",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, suppressed: []schema.RecipientResult{supp}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(553, "5.1.3 bad syntax")}})},
			row: rowPermanent, listed: []string{"s@x", "u@x"}, bounced: []string{"u@x"}},
		{name: "550 without an enhanced code: not a bounce",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(550, "no such user")}})},
			row: rowPermanent, listed: []string{"u@x"}},
		{name: "550 5.7.1 policy: not a bounce",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(550, "5.7.1 relay denied")}})},
			row: rowPermanent, listed: []string{"u@x"}},
		{name: "550 5.1.8 blames the sender: not a bounce",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(550, "5.1.8 bad sender domain")}})},
			row: rowPermanent, listed: []string{"u@x"}},
		{name: "450 4.1.1 is for now: not a bounce",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"u@x"}, failure: classifyRecipients([]rcptFailure{{"u@x", reply(450, "4.1.1 try later")}})},
			row: rowDeferred, listed: []string{"u@x"}},
		{name: "transient with a suppressed one: the deferral keeps it listed",
			f:   facts{attempt: 1, attempted: true, attemptedTo: []string{"a@x"}, suppressed: []schema.RecipientResult{supp}, failure: Classify(withOp(OpDial, io.EOF))},
			row: rowDeferred, listed: []string{"s@x", "a@x"}},
		{name: "exhausted with a suppressed one: nobody left waiting",
			f:   facts{attempt: 3, attempted: true, attemptedTo: []string{"a@x"}, suppressed: []schema.RecipientResult{supp}, failure: Classify(withOp(OpDial, io.EOF))},
			row: rowExhausted, listed: []string{"s@x", "a@x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.firstSeen, tc.f.now = t0, t0.Add(time.Second)
			d := decide(tc.f, p)
			if d.row != tc.row {
				t.Fatalf("row %q, want %q", d.row, tc.row)
			}
			var listed, bounced []string
			for _, r := range d.event.Recipients {
				listed = append(listed, r.Address)
				if r.Suppressed && (r.Status != 403 || r.Reason == "") {
					t.Errorf("suppressed recipient %+v without 403 and its reason", r)
				}
				if d.event.Final() && r.Status == 202 {
					t.Errorf("final event with a waiting recipient: %+v", r)
				}
			}
			for _, r := range d.bounced {
				bounced = append(bounced, r.Address)
			}
			if !slices.Equal(listed, tc.listed) {
				t.Errorf("Recipients %v, want %v (%+v)", listed, tc.listed, d.event.Recipients)
			}
			if !slices.Equal(bounced, tc.bounced) {
				t.Errorf("bounced %v, want %v", bounced, tc.bounced)
			}
		})
	}
}
