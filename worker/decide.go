package worker

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// ackVerb is how a message is settled with JetStream.
type ackVerb uint8

const (
	verbSend     ackVerb = iota + 1 // nothing stops it: go on and send
	verbAck                         // done: sent, or already sent
	verbTerm                        // done: failed for good; never redeliver
	verbNakDelay                    // retry after delay
	verbNak                         // redeliver at once, elsewhere (shutdown)
)

func (v ackVerb) String() string {
	return [...]string{"", "send", "ack", "term", "nak-delay", "nak"}[v]
}

// row names a row of the decision table. Every outcome of a delivery is
// one row; decide_test.go has a case for each.
type row string

// The rows of the decision table, in the order decide tries them.
const (
	rowNoMetadata    row = "no metadata"          // not a JetStream message: Term, no event
	rowShutdownIdle  row = "shutdown before work" // taken while stopping: Nak, no event
	rowInvalid       row = "invalid"              // breaks the contract: 400, Term
	rowDuplicateSent row = "already sent"         // dedupe: Ack, no event
	rowAlreadyFinal  row = "already final"        // this delivery's final failure is stored: Term
	rowAlreadyGone   row = "already cancelled"    // the Id's cancelled event is stored: Term
	rowCancelled     row = "cancelled"            // a cancellation mark: 410, Term
	rowForbidden     row = "sender not allowed"   // 403, dead letter, Term
	rowOverAttempts  row = "over max attempts"    // delivered again after a crash: 500, dead letter, Term
	rowScheduled     row = "scheduled"            // SendAt ahead: parked until then, 202 scheduled, Ack
	rowSuppressed    row = "all suppressed"       // every recipient left is suppressed: 403, no SMTP, Term
	rowSend          row = "send"                 // go on: accepted on the first attempt
	rowShutdown      row = "shutdown during send" // the grace period ran out: Nak, no event
	rowSent          row = "sent"                 // 250 after DATA: 200, Ack
	rowPartial       row = "sent, some to retry"  // some recipients refused it for now: 202 deferred, NakWithDelay
	rowDeferred      row = "transient, retry"     // 202 deferred, NakWithDelay
	rowExhausted     row = "transient, exhausted" // attempts or age used up: 500/401, dead letter, Term
	rowPermanent     row = "permanent"            // 5xx: 403/404/500, dead letter, Term
)

// allRows lists every row, for the table test to check that each has a
// case.
var allRows = []row{
	rowNoMetadata, rowShutdownIdle, rowInvalid, rowDuplicateSent, rowAlreadyFinal, rowAlreadyGone,
	rowCancelled, rowForbidden, rowOverAttempts, rowScheduled, rowSuppressed, rowSend, rowShutdown, rowSent,
	rowPartial, rowDeferred, rowExhausted, rowPermanent,
}

// lastEvent is what dedupe found: the latest stored event of the Id.
type lastEvent struct {
	state      schema.State
	recipients []schema.RecipientResult
	seq        uint64 // its sequence in the result stream
	// sameRequest says it is about this very request message (the same
	// stream sequence), not an earlier publish of the Id.
	sameRequest bool
}

// facts are what handle learned about one delivery of one request. Before
// the message is sent, attempted is false and decide says whether to send
// (verbSend); after it, attempted is true and decide says how it ended.
type facts struct {
	base      schema.Result // Id, Attempt, Metadata, MessageId for every event
	attempt   int
	firstSeen time.Time
	now       time.Time

	noMetadata bool
	shutdown   bool       // the worker's grace period ran out (or it stopped before starting)
	invalid    error      // a *schema.ValidationError or *config.SenderNotAllowedError
	last       *lastEvent // nil: no event stored yet
	cancelled  bool       // a cancellation mark names the Id or its batch
	sendAt     *time.Time // the request must wait until then (not yet parked)
	envelope   *schema.Envelope

	attempted   bool
	attemptedTo []string // the recipients of this attempt (those not settled before)
	delivery    Delivery
	failure     *DeliveryError // nil: sent
	// prior are the recipients' outcomes of earlier attempts, from the
	// latest event: a retry goes only to those still waiting (202).
	prior []schema.RecipientResult
	// assumeSent is the connection's on_uncertain: assume-sent.
	assumeSent bool
	// suppressed are the recipients of this attempt skipped because they
	// are on the suppression list (Status 403, Suppressed); attemptedTo
	// holds the others.
	suppressed []schema.RecipientResult
}

// decision is the effect of one delivery: the event to publish (if any),
// whether to copy the request to the dead-letter stream, and how to settle
// the message. decide computes it; settle carries it out.
type decision struct {
	row   row
	event *schema.Result
	dead  bool
	// park says the request is to be stored on its schedule subject to
	// wait for its SendAt.
	park bool
	// claimedEvent is the event once claim stored it (event is then nil).
	claimedEvent *schema.Result
	verb         ackVerb
	delay        time.Duration
	// outcome is the requests_total label this delivery adds, if any.
	outcome string
	// bounced are the recipients the server refused as unknown (see
	// bounced), to be added to the suppression list.
	bounced []schema.RecipientResult
}

// decide is the decision table of a delivery: every outcome is one row,
// tried in this order. It is a pure function of the facts and the retry
// policy.
//
//	row                   event                           dead  verb       requests_total
//	no metadata           —                               —     Term       —
//	shutdown before work  —                               —     Nak        —
//	invalid               failed 400 (+Fields)            —     Term       invalid
//	already sent          —                               —     Ack        duplicate
//	already final         —                               —     Term       duplicate
//	already cancelled     —                               —     Term       —
//	cancelled             cancelled 410                   —     Term       —
//	sender not allowed    failed 403                      yes   Term       invalid
//	over max attempts     failed 500                      yes   Term       —
//	scheduled             scheduled 202 (+SendAt), parked —     Ack        scheduled
//	all suppressed        failed 403 (+Recipients)        —     Term       —
//	send                  accepted 202 on attempt 1 (*)   —     (send)     accepted with it
//	shutdown during send  —                               —     Nak        —
//	sent                  sent 200 (+Recipients)          —     Ack        —
//	sent, some to retry   deferred 202, Recipients 200/202 —    NakDelay   —
//	transient, retry      deferred 202, NextAttemptAt     —     NakDelay   —
//	transient, exhausted  failed 500 (401 for auth)       yes   Term       —
//	permanent             failed 403/404/500              yes   Term       —
//
// (*) or on a later delivery when no event is stored yet.
//
// The rows after an attempt also name the recipients that bounced (the
// server refused them as unknown), which settle adds to the suppression
// list. A suppressed recipient is listed in the Recipients of every event
// after its attempt, as not having the message; a message none of whose
// recipients got it because all are suppressed gets no dead letter:
// replaying it would only be suppressed again.
func decide(f facts, p RetryPolicy) decision {
	ev := f.base
	ev.Time = f.now
	fail := func(r row, status schema.Status, msg string, dead bool, outcome string) decision {
		ev.State, ev.Status, ev.Error = schema.StateFailed, status, msg
		return decision{row: r, event: &ev, dead: dead, verb: verbTerm, outcome: outcome}
	}
	var notAllowed *config.SenderNotAllowedError
	forbidden := errors.As(f.invalid, &notAllowed)
	switch {
	case f.noMetadata:
		return decision{row: rowNoMetadata, verb: verbTerm}
	case f.shutdown && !f.attempted:
		return decision{row: rowShutdownIdle, verb: verbNak}
	case f.invalid != nil && !forbidden:
		d := fail(rowInvalid, schema.Status400, f.invalid.Error(), false, "invalid")
		var ve *schema.ValidationError
		if errors.As(f.invalid, &ve) {
			d.event.Fields = ve.Fields
		}
		return d
	case f.last != nil && f.last.state == schema.StateSent:
		return decision{row: rowDuplicateSent, verb: verbAck, outcome: "duplicate"}
	case f.last != nil && f.last.state == schema.StateFailed && f.last.sameRequest:
		return decision{row: rowAlreadyFinal, verb: verbTerm, outcome: "duplicate"}
	case f.last != nil && f.last.state == schema.StateCancelled:
		return decision{row: rowAlreadyGone, verb: verbTerm}
	case f.cancelled && !f.attempted:
		ev.State, ev.Status, ev.Error = schema.StateCancelled, schema.Status410, "cancelled before it was sent"
		return decision{row: rowCancelled, event: &ev, verb: verbTerm}
	case forbidden:
		return fail(rowForbidden, schema.Status403, f.invalid.Error(), true, "invalid")
	case !f.attempted && f.attempt > p.MaxAttempts:
		// Deliveries beyond MaxAttempts happen when a worker died holding
		// the message; do not start another attempt.
		return fail(rowOverAttempts, schema.Status500,
			fmt.Sprintf("delivered %d times, more than the %d attempts allowed", f.attempt, p.MaxAttempts), true, "")
	case !f.attempted && f.sendAt != nil:
		ev.State, ev.Status, ev.SendAt, ev.Envelope = schema.StateScheduled, schema.Status202, f.sendAt, f.envelope
		return decision{row: rowScheduled, event: &ev, park: true, verb: verbAck, outcome: "scheduled"}
	case !f.attempted && len(f.attemptedTo) == 0 && len(f.suppressed) > 0 && countStatus(f.prior, schema.Status200) == 0:
		ev.Recipients = append(withoutAddresses(f.prior, f.suppressed), f.suppressed...)
		return fail(rowSuppressed, schema.Status403, fmt.Sprintf("every recipient is on the suppression list (%d suppressed)", len(f.suppressed)), false, "")
	case !f.attempted:
		d := decision{row: rowSend, verb: verbSend}
		// Accepted comes before the first SMTP attempt: on the first
		// delivery, and on a later one when no event is stored yet (the
		// first delivery was lost with a connection, or its worker died
		// before it could publish anything).
		if f.attempt == 1 || f.last == nil {
			ev.State, ev.Status, ev.Envelope = schema.StateAccepted, schema.Status202, f.envelope
			d.event, d.outcome = &ev, "accepted"
		}
		return d
	case f.shutdown:
		return decision{row: rowShutdown, verb: verbNak}
	}
	// The attempt is over: who has the message now?
	de := f.failure
	ev.Uncertain = f.delivery.Uncertain
	if de != nil && de.Uncertain {
		ev.Uncertain = true // the relay may have it (contract §3)
		if f.assumeSent {
			de = nil // at most once: take it as delivered
		}
	}
	rcpts, accepted, waiting := mergeRecipients(append(withoutAddresses(f.prior, f.suppressed), f.suppressed...), f.attemptedTo, f.delivery, de)
	d := decideAttempt(f, p, ev, de, rcpts, accepted, waiting)
	for _, r := range rcpts {
		if bounced(r) && slices.ContainsFunc(f.attemptedTo, func(a string) bool { return strings.EqualFold(a, r.Address) }) {
			d.bounced = append(d.bounced, r) // refused on this attempt, not an earlier one
		}
	}
	return d
}

// decideAttempt is the part of decide after an attempt, once the recipients'
// outcomes are merged.
func decideAttempt(f facts, p RetryPolicy, ev schema.Result, de *DeliveryError, rcpts []schema.RecipientResult, accepted, waiting int) decision {
	fail := func(r row, status schema.Status, msg string) decision {
		ev.State, ev.Status, ev.Error = schema.StateFailed, status, msg
		return decision{row: r, event: &ev, dead: true, verb: verbTerm}
	}
	if de != nil && accepted == 0 {
		// No recipient has it: the failure decides.
		ev.Smtp, ev.Recipients = de.Reply, de.Recipients
		if len(f.prior) > 0 || len(f.suppressed) > 0 {
			// Keep what earlier attempts and the suppression list settled.
			ev.Recipients = rcpts
		}
		if de.Class == Transient {
			if next, ok := p.Next(f.attempt, f.firstSeen, f.now); ok {
				ev.State, ev.Status, ev.Error = schema.StateDeferred, schema.Status202, de.Error()
				ev.NextAttemptAt = &next
				return decision{row: rowDeferred, event: &ev, verb: verbNakDelay, delay: next.Sub(f.now)}
			}
			ev.Recipients = stillRefused(ev.Recipients)
			return fail(rowExhausted, de.Status, fmt.Sprintf("gave up after %d attempts over %s: %s",
				f.attempt, f.now.Sub(f.firstSeen).Round(time.Second), de.Error()))
		}
		return fail(rowPermanent, de.Status, de.Error())
	}
	// Some recipient accepted it, now or on an earlier attempt.
	ev.Smtp = f.delivery.Reply
	if de != nil {
		ev.Smtp = de.Reply
	}
	if waiting > 0 {
		if next, ok := p.Next(f.attempt, f.firstSeen, f.now); ok {
			ev.State, ev.Status, ev.Recipients, ev.NextAttemptAt = schema.StateDeferred, schema.Status202, rcpts, &next
			ev.Error = fmt.Sprintf("%d of %d recipients refused it for now; retrying them", waiting, len(rcpts))
			return decision{row: rowPartial, event: &ev, verb: verbNakDelay, delay: next.Sub(f.now)}
		}
		rcpts = stillRefused(rcpts)
	}
	// The final event lists the recipients that do not have it.
	ev.State, ev.Status = schema.StateSent, schema.Status200
	for _, r := range rcpts {
		if r.Status != schema.Status200 {
			ev.Recipients = append(ev.Recipients, r)
		}
	}
	return decision{row: rowSent, event: &ev, verb: verbAck}
}

// stillRefused is rs with the recipients that wait for a retry (202)
// marked 500: still refused when the attempts ran out.
func stillRefused(rs []schema.RecipientResult) []schema.RecipientResult {
	out := make([]schema.RecipientResult, len(rs))
	for i, r := range rs {
		if r.Status == schema.Status202 {
			r.Status = schema.Status500
		}
		out[i] = r
	}
	return out
}

// countStatus is the number of rs with status st.
func countStatus(rs []schema.RecipientResult, st schema.Status) int {
	n := 0
	for _, r := range rs {
		if r.Status == st {
			n++
		}
	}
	return n
}

// withoutAddresses is rs without the recipients that drop names (any
// case); rs itself when drop is empty.
func withoutAddresses(rs, drop []schema.RecipientResult) []schema.RecipientResult {
	if len(drop) == 0 {
		return rs
	}
	gone := map[string]bool{}
	for _, r := range drop {
		gone[strings.ToLower(r.Address)] = true
	}
	out := make([]schema.RecipientResult, 0, len(rs))
	for _, r := range rs {
		if !gone[strings.ToLower(r.Address)] {
			out = append(out, r)
		}
	}
	return out
}

// mergeRecipients merges the recipients' outcomes: those settled on earlier
// attempts (prior: the latest event's Recipients), then those of this
// attempt, which went to attempted. A recipient of this attempt is 200 when
// the message was delivered and the server did not refuse it at RCPT; the
// result of its refusal otherwise (202 while it may be retried). It returns
// them in order with the number accepted (200) and waiting (202).
func mergeRecipients(prior []schema.RecipientResult, attempted []string, d Delivery, de *DeliveryError) (rs []schema.RecipientResult, accepted, waiting int) {
	now := map[string]schema.RecipientResult{}
	for _, a := range attempted {
		r := schema.RecipientResult{Address: a, Status: schema.Status200}
		if de != nil {
			r.Status = de.Status
			if de.Class == Transient {
				r.Status = schema.Status202
			}
			if de.Reply != nil {
				r.Code, r.Message = de.Reply.Code, strings.TrimSpace(de.Reply.EnhancedCode+" "+de.Reply.Message)
			}
		}
		now[strings.ToLower(a)] = r
	}
	refused := d.Rejected
	if de != nil {
		refused = de.Recipients
	}
	for _, r := range refused {
		if _, ok := now[strings.ToLower(r.Address)]; ok {
			now[strings.ToLower(r.Address)] = r
		}
	}
	seen := map[string]bool{}
	add := func(r schema.RecipientResult) {
		if k := strings.ToLower(r.Address); !seen[k] {
			seen[k] = true
			rs = append(rs, r)
		}
	}
	for _, r := range prior {
		if n, ok := now[strings.ToLower(r.Address)]; ok {
			add(n)
		} else {
			add(r)
		}
	}
	for _, a := range attempted {
		add(now[strings.ToLower(a)])
	}
	for _, r := range rs {
		switch r.Status {
		case schema.Status200:
			accepted++
		case schema.Status202:
			waiting++
		}
	}
	return rs, accepted, waiting
}
