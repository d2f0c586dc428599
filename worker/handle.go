package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.27.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
	"github.com/jetmail/jetmail/tracing"
)

// job is one delivery of one request message.
type job struct {
	msg       jetstream.Msg
	id        string
	seq       uint64
	attempt   int
	firstSeen time.Time
	data      []byte
	span      trace.SpanContext // the delivery's span, continued by its events
	// stopProgress stops the progress acks; settle calls it before the
	// ack verb, handle when it returns.
	stopProgress func()
	// stop is closed when the worker's grace period is over: publishes
	// that get no answer stop being tried (publishDurable).
	stop <-chan struct{}
}

// handle takes one message from decoding to settling: it gathers the
// facts of the delivery, lets decide decide, and has settle carry the
// decision out. It never returns an error: every outcome is a decision,
// and a message that cannot be settled is redelivered by JetStream after
// AckWait.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	w.metrics.Inflight.Inc()
	defer w.metrics.Inflight.Dec()
	j := &job{msg: msg, data: msg.Data(), stopProgress: func() {}, stop: ctx.Done()}
	meta, err := msg.Metadata()
	if err != nil {
		w.log.ErrorContext(ctx, "message without JetStream metadata", "subject", msg.Subject(), "error", err)
		w.settle(ctx, j, decide(facts{noMetadata: true}, w.cfg.Retry))
		return
	}
	j.seq, j.attempt, j.firstSeen = meta.Sequence.Stream, int(meta.NumDelivered), meta.Timestamp
	if !w.holding.take(j.seq) {
		// JetStream handed out again a request that a handler here still
		// works on: its AckWait ran out while NATS was away or frozen and
		// the progress acks could not reach it. Working on the copy too
		// would send the message twice; the handler that holds it settles
		// it (acks name the stream sequence, not the delivery), and if it
		// cannot, JetStream hands the request out again after AckWait.
		w.log.InfoContext(ctx, "redelivered while still in hand; leaving the copy", "seq", j.seq, "attempt", j.attempt)
		return
	}
	defer w.holding.release(j.seq)
	// Progress acks run until the message is settled, not only during the
	// SMTP session: storing the result may take a while too (a NATS node
	// lost, a leader elected), and JetStream must not hand the message to
	// another worker meanwhile. A message left unsettled is redelivered
	// once they stop.
	j.stopProgress = w.keepInProgress(msg)
	defer j.stopProgress()

	req, err := w.admission.Parse(j.data)
	j.id = requestID(req, msg.Headers(), meta)
	lane := w.cfg.Names.LaneOf(msg.Subject())
	// The delivery continues the trace of whoever published the request.
	ctx, span := w.tracer.Start(tracing.Extract(ctx, msg.Headers()), "deliver "+string(lane),
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingOperationTypeProcess,
			semconv.MessagingDestinationName(msg.Subject()), semconv.MessagingMessageID(j.id),
			attribute.Int("jetmail.attempt", j.attempt), attribute.String("jetmail.lane", string(lane))))
	defer span.End()
	j.span = span.SpanContext()
	f := facts{
		base:      schema.Result{Id: j.id, Attempt: j.attempt, Lane: lane},
		attempt:   j.attempt,
		firstSeen: j.firstSeen,
		now:       w.now(),
		shutdown:  errors.Is(context.Cause(ctx), errShutdown),
		invalid:   err,
	}
	var env *Envelope
	if req != nil {
		req.Id = j.id
		f.base.Metadata, f.base.BatchId = req.Metadata, req.BatchId
		f.cancelled = w.cancels.cancelled(j.id, req.BatchId)
	}
	if f.invalid == nil {
		// A first delivery claims the Id with a conditional publish of
		// its first event instead of looking up the latest event (claim):
		// one JetStream operation fewer on the common path. Where events
		// are to be expected (a retry, a schedule that fired, a
		// cancellation mark) the latest one is looked up first, so that
		// the conditional publish rarely loses: a core NATS subscriber to
		// the result subjects sees a publish that JetStream refused too.
		if j.attempt > 1 || f.cancelled || msg.Headers().Get("Nats-Scheduler") != "" {
			f.last = w.dedupe(ctx, j)
		}
		_, f.invalid = w.admission.CheckSender(req)
	}
	var copies []*Envelope // one per recipient, for one-click unsubscribe
	if f.invalid == nil {
		opts := BuildOptions{DefaultFrom: w.admission.DefaultFrom(req), Date: j.firstSeen,
			DKIM: w.dkim[config.ConnectionName(req.Connection)]}
		if req.Unsubscribe.OneClick && w.cfg.Unsubscribe != nil {
			// Each recipient gets a copy with its own link (below); this
			// build checks the request and gives the envelope.
			opts.OneClickURL = w.oneClickURL("")
		}
		env, err = Build(req, opts)
		if err != nil {
			field := "From"
			if errors.Is(err, ErrOneClickNotConfigured) {
				field = "Unsubscribe"
			}
			f.invalid = &schema.ValidationError{Fields: []schema.FieldError{{Field: field, Message: err.Error()}}}
		} else {
			f.base.MessageId = "<" + env.MessageID + ">"
			f.envelope = &schema.Envelope{From: env.From, Recipients: env.To, Subject: req.Subject}
			f.assumeSent = w.cfg.Connections[config.ConnectionName(req.Connection)].OnUncertain == config.OnUncertainAssumeSent
			if f.last != nil {
				// A retry goes only to the recipients still waiting.
				f.prior = f.last.recipients
				env.To = waitingRecipients(env.To, f.prior)
			}
			env.To, f.suppressed = w.skipSuppressed(req, lane, env.To)
			f.attemptedTo = env.To
			if opts.OneClickURL != "" && len(env.To) > 0 {
				if copies, err = w.oneClickCopies(req, opts, env.To); err != nil {
					f.invalid = &schema.ValidationError{Fields: []schema.FieldError{{Field: "Unsubscribe", Message: err.Error()}}}
				}
			}
		}
		// A request waits for its SendAt unless JetStream just published
		// it because the time has come (it then carries Nats-Scheduler).
		if req.SendAt != nil && req.SendAt.After(f.now.Add(time.Second)) && msg.Headers().Get("Nats-Scheduler") == "" {
			f.sendAt = req.SendAt
		}
	}
	d, ok := w.claim(ctx, j, &f, decide(f, w.cfg.Retry))
	if !ok {
		return // the first event could not be stored: JetStream redelivers
	}
	if d.verb == verbSend && w.cancels.cancelled(j.id, f.base.BatchId) {
		// The last look before the transaction begins.
		f.cancelled = true
		if d, ok = w.claim(ctx, j, &f, decide(f, w.cfg.Retry)); !ok {
			return
		}
	}
	if d.verb == verbSend {
		if d.outcome != "" {
			w.metrics.Requests.WithLabelValues(d.outcome).Inc()
		}
		env.stop = func() bool { return w.cancels.cancelled(j.id, f.base.BatchId) }
		f.attempted = true
		delivered := false // some copy went out: a shutdown now must not lose that
		switch {
		case len(env.To) == 0: // every recipient was settled by an earlier attempt, or is suppressed
		case copies != nil:
			copies[0].stop = env.stop
			f.delivery, f.failure, delivered = w.sendEach(ctx, j, copies, f.assumeSent)
		default:
			f.delivery, f.failure = w.send(ctx, j, env)
		}
		f.now = w.now()
		f.shutdown = errors.Is(context.Cause(ctx), errShutdown) && !delivered
		if f.failure != nil && errors.Is(f.failure, errCancelled) {
			// Cancelled while it waited for the rate limit or a session:
			// nothing was sent.
			f.attempted, f.failure, f.cancelled = false, nil, true
			if d, ok = w.claim(ctx, j, &f, decide(f, w.cfg.Retry)); !ok {
				return
			}
		} else {
			d = decide(f, w.cfg.Retry)
		}
	}
	if ev := cmp.Or(d.event, d.claimedEvent); ev != nil {
		span.SetAttributes(attribute.String("jetmail.state", string(ev.State)), attribute.Int("jetmail.status", int(ev.Status)))
	}
	w.settle(ctx, j, d)
}

// holdSet is the set of requests a worker is handling, by stream
// sequence. It is safe for concurrent use; the zero value is empty.
type holdSet struct {
	mu   sync.Mutex
	seqs map[uint64]struct{}
}

// take adds seq and reports whether it was not there yet.
func (h *holdSet) take(seq uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.seqs[seq]; ok {
		return false
	}
	if h.seqs == nil {
		h.seqs = map[uint64]struct{}{}
	}
	h.seqs[seq] = struct{}{}
	return true
}

// release removes seq.
func (h *holdSet) release(seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.seqs, seq)
}

// skipSuppressed takes the suppressed recipients out of to (contract §9)
// and returns the others and the results of those skipped, counting them.
func (w *Worker) skipSuppressed(req *schema.Request, lane schema.Lane, to []string) ([]string, []schema.RecipientResult) {
	keep, skipped := w.checker.Skip(req, lane, to)
	if len(skipped) == 0 {
		return keep, nil
	}
	out := make([]schema.RecipientResult, len(skipped))
	for i, s := range skipped {
		out[i] = schema.RecipientResult{Address: s.Address, Status: schema.Status403, Suppressed: true, Reason: string(s.Entry.Reason),
			Message: "on the suppression list (" + string(s.Entry.Reason) + ")"}
		w.metrics.Suppressed.WithLabelValues(string(s.Entry.Reason)).Inc()
	}
	return keep, out
}

// oneClickURL is the one-click unsubscribe link of a recipient (contract
// §9): {public-url}/v1/unsubscribe/{token}.
func (w *Worker) oneClickURL(recipient string) string {
	tok := "-"
	if recipient != "" {
		tok = w.cfg.Unsubscribe.Token(recipient)
	}
	return w.cfg.PublicURL + "/v1/unsubscribe/" + tok
}

// oneClickCopies builds one message per recipient of to, each with the
// recipient's own one-click link: a token names one person.
func (w *Worker) oneClickCopies(req *schema.Request, opts BuildOptions, to []string) ([]*Envelope, error) {
	copies := make([]*Envelope, len(to))
	for i, rcpt := range to {
		opts.OneClickURL = w.oneClickURL(rcpt)
		env, err := Build(req, opts)
		if err != nil {
			return nil, err
		}
		env.To, env.part = []string{rcpt}, i+1
		copies[i] = env
	}
	return copies, nil
}

// sendEach sends the one-recipient copies of a message one after the
// other, and merges their outcomes into one Delivery, or one DeliveryError
// when no copy was delivered, whose Recipients say what happened to each
// (which decide needs: one recipient may be unknown while another's server
// is down). Only the first copy may find the message cancelled: once one
// went out, the message is being sent. delivered reports whether some copy
// went out; copies not tried because the grace period ran out are left
// waiting (202), to be sent on a retry.
func (w *Worker) sendEach(ctx context.Context, j *job, copies []*Envelope, assumeSent bool) (d Delivery, de *DeliveryError, delivered bool) {
	var (
		results  []schema.RecipientResult
		fallback *DeliveryError // the failure that speaks for all when no copy went out
	)
	for i, c := range copies {
		if errors.Is(context.Cause(ctx), errShutdown) {
			results = append(results, schema.RecipientResult{Address: c.To[0], Status: schema.Status202, Message: "not sent: the worker stopped"})
			continue
		}
		cd, cde := w.send(ctx, j, c)
		switch {
		case cde == nil && cd.Reply == nil && errors.Is(context.Cause(ctx), errShutdown):
			// Cut short by the shutdown: it may have gone out or not.
			results = append(results, schema.RecipientResult{Address: c.To[0], Status: schema.Status202, Message: "interrupted: the worker stopped"})
			d.Uncertain = true
		case cde == nil || (cde.Uncertain && assumeSent):
			delivered = true
			d.Uncertain = d.Uncertain || cde != nil
			if cde == nil {
				d.Reply = cd.Reply
			}
		case i == 0 && errors.Is(cde, errCancelled):
			return cd, cde, false // nothing was sent
		default:
			if len(cde.Recipients) == 1 {
				results = append(results, cde.Recipients[0])
			} else {
				results = append(results, recipientResult(c.To[0], cde))
			}
			d.Uncertain = d.Uncertain || cde.Uncertain
			if fallback == nil || (cde.Class == Transient && fallback.Class != Transient) {
				fallback = cde
			}
		}
	}
	switch {
	case delivered:
		d.Rejected = results
		return d, nil, true
	case fallback == nil: // the shutdown came first: nothing went out
		return Delivery{}, nil, false
	}
	merged := *fallback
	merged.Recipients = results
	return Delivery{}, &merged, false
}

// claims are the rows whose event is the message's first word on the
// matter, published conditionally (publishClaim) because a canceller may be
// publishing another at the same moment.
func claims(d decision) bool {
	return d.event != nil && (d.row == rowSend || d.row == rowScheduled || d.row == rowCancelled || d.row == rowSuppressed)
}

// claim publishes the event of a claiming decision conditionally on the
// latest event the facts know of. When another event came first it looks
// the latest one up and decides again (a canceller may have cancelled the
// message, or this is an Id that has events already: a fired schedule, a
// re-publish), up to three times. It returns the decision to carry out,
// its event already stored (event nil), and ok false when the event could
// not be stored at all, in which case the message is left for JetStream to
// redeliver.
func (w *Worker) claim(ctx context.Context, j *job, f *facts, d decision) (decision, bool) {
	for range 3 {
		if !claims(d) {
			return d, true
		}
		var expect uint64
		if f.last != nil {
			expect = f.last.seq
		}
		if d.event.Time.IsZero() {
			d.event.Time = w.now()
		}
		seq, err := w.publishClaim(ctx, j, d.event, expect)
		if err == nil {
			f.last = &lastEvent{state: d.event.State, seq: seq, sameRequest: true}
			return w.claimed(d), true
		}
		if !errors.Is(err, errClaimLost) {
			w.log.ErrorContext(ctx, "cannot store result; leaving the message for redelivery", "id", j.id, "state", d.event.State, "error", err)
			return d, false
		}
		f.last = w.dedupe(ctx, j)
		if f.last != nil && f.last.sameRequest && f.last.state == d.event.State {
			return w.claimed(d), true // stored by an earlier try whose answer was lost
		}
		d = decide(*f, w.cfg.Retry)
	}
	w.log.WarnContext(ctx, "the result subject keeps changing; leaving the message for redelivery", "id", j.id)
	return d, false
}

// claimed is d with its (stored) event counted and removed, so that settle
// does not publish it again.
func (w *Worker) claimed(d decision) decision {
	if d.row == rowCancelled {
		w.metrics.Cancelled.Inc()
	}
	d.event, d.claimedEvent = nil, d.event
	return d
}

// requestID is the Id of a request: its Id key; else the Jetmail-Id header
// of a parked request; else the Nats-Msg-Id header when that is a valid Id;
// else one derived from the stream position, which stays the same on every
// redelivery.
func requestID(req *schema.Request, h nats.Header, meta *jetstream.MsgMetadata) string {
	if req != nil && schema.ValidID(req.Id) {
		return req.Id
	}
	if v := h.Get(headerRequestID); schema.ValidID(v) {
		return v // a parked request, whose Nats-Msg-Id JetStream removed
	}
	if v := h.Get(jetstream.MsgIDHeader); schema.ValidID(v) {
		return v
	}
	return fmt.Sprintf("jm-%d-%d", meta.Timestamp.UnixNano(), meta.Sequence.Stream)
}

// dedupe looks up the latest result of the Id: a message already sent is
// acknowledged without sending again, and a request whose final failure is
// already stored (a crash between publishing it and Term) is terminated.
// A failed look-up is no fact: the message is delivered anyway.
func (w *Worker) dedupe(ctx context.Context, j *job) *lastEvent {
	raw, err := w.results.GetLastMsgForSubject(ctx, w.cfg.Names.ResultSubject(j.id))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			w.log.WarnContext(ctx, "status look-up failed; delivering anyway", "id", j.id, "error", err)
		}
		return nil
	}
	var last schema.Result
	if err := json.Unmarshal(raw.Data, &last); err != nil {
		return nil
	}
	return &lastEvent{state: last.State, seq: raw.Sequence, recipients: last.Recipients,
		sameRequest: raw.Header.Get(headerRequestSeq) == strconv.FormatUint(j.seq, 10)}
}

// waitingRecipients are the recipients of to that the earlier attempts
// did not settle: all of them unless prior (the latest event's Recipients)
// lists them with a status other than 202.
func waitingRecipients(to []string, prior []schema.RecipientResult) []string {
	settled := map[string]bool{}
	for _, r := range prior {
		if r.Status != schema.Status202 {
			settled[strings.ToLower(r.Address)] = true
		}
	}
	var out []string
	for _, a := range to {
		if !settled[strings.ToLower(a)] {
			out = append(out, a)
		}
	}
	return out
}

// send hands env to the transport and classifies what happened, counting
// the attempt.
func (w *Worker) send(ctx context.Context, j *job, env *Envelope) (Delivery, *DeliveryError) {
	conn := config.ConnectionName(env.Connection)
	ctx, span := w.tracer.Start(ctx, "smtp send", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("jetmail.connection", conn), semconv.NetworkTransportTCP,
			attribute.Int("jetmail.recipients", len(env.To))))
	defer span.End()
	if t := w.targets[conn]; t != nil {
		span.SetAttributes(semconv.ServerAddress(t.Host), semconv.ServerPort(t.Port))
	}
	start := time.Now()
	res, err := w.transport.Send(ctx, env)
	elapsed := time.Since(start)
	if res.Reply != nil {
		span.SetAttributes(attribute.Int("smtp.reply.code", res.Reply.Code))
	}
	if errors.Is(context.Cause(ctx), errShutdown) {
		return res, nil // decide sees the shutdown; the outcome does not count
	}
	if errors.Is(err, errCancelled) {
		return res, Classify(err) // nothing was sent: not an attempt, not counted
	}
	de := Classify(err)
	outcome := "ok"
	if de != nil {
		outcome = de.Class.String()
		span.SetStatus(codes.Error, de.Error())
		if de.Reply != nil {
			span.SetAttributes(attribute.Int("smtp.reply.code", de.Reply.Code))
		}
	}
	w.metrics.SMTPAttempts.WithLabelValues(conn, outcome).Inc()
	if de != nil && de.Uncertain {
		w.metrics.Uncertain.WithLabelValues(conn).Inc()
	}
	w.metrics.SMTPSend.WithLabelValues(conn).Observe(elapsed.Seconds())
	switch {
	case de != nil:
		args := []any{"id", j.id, "attempt", j.attempt, "connection", conn, "op", string(de.Op),
			"class", de.Class.String(), "error", de.Err.Error(), "duration", elapsed}
		if de.Reply != nil {
			args = append(args, "smtp_code", de.Reply.Code, "smtp_enhanced", de.Reply.EnhancedCode)
		}
		w.log.WarnContext(ctx, "delivery failed", args...)
	case w.log.Enabled(ctx, slog.LevelDebug): // no logging cost on the hot path otherwise
		w.log.DebugContext(ctx, "delivered", "id", j.id, "attempt", j.attempt, "connection", conn,
			"duration", elapsed, "recipients", len(env.To))
	}
	return res, de
}

// settle makes the decision's events durable, then settles the message.
// If an event cannot be stored the message is left unsettled: JetStream
// redelivers it after AckWait, and dedupe keeps a sent message from going
// out twice.
func (w *Worker) settle(ctx context.Context, j *job, d decision) {
	ctx = context.WithoutCancel(ctx) // finish settling even during shutdown
	// The logger with the message's attributes is built only when needed:
	// With allocates, and this runs for every message.
	log := func() *slog.Logger { return w.log.With("id", j.id, "attempt", j.attempt) }
	if d.outcome != "" {
		w.metrics.Requests.WithLabelValues(d.outcome).Inc()
	}
	if d.event != nil && d.event.Time.IsZero() {
		d.event.Time = w.now()
	}
	// The dead letter goes first, so that whoever sees a final failure can
	// find it for replay.
	if d.dead {
		if err := w.publishDead(ctx, j, d.event); err != nil {
			log().ErrorContext(ctx, "cannot store dead letter; leaving the message for redelivery", "error", err)
			return
		}
	}
	// Bounces go on the list before the event that reports them, so that
	// whoever reads the event finds them there.
	for _, r := range d.bounced {
		w.addBounce(ctx, j, r)
	}
	if d.park {
		if err := w.publishSchedule(ctx, j, *d.claimedEvent.SendAt); err != nil {
			log().ErrorContext(ctx, "cannot park the request; leaving it for redelivery", "error", err)
			return
		}
	}
	if d.event != nil {
		if err := w.publishResult(ctx, j, d.event); err != nil {
			log().ErrorContext(ctx, "cannot store result; leaving the message for redelivery", "state", d.event.State, "error", err)
			return
		}
	}
	if ev := cmp.Or(d.event, d.claimedEvent); ev != nil && ev.Final() {
		w.metrics.DeliveryLatency.Observe(ev.Time.Sub(j.firstSeen).Seconds())
	}
	// A progress ack after NakWithDelay would restart AckWait and undo
	// the delay.
	j.stopProgress()
	var err error
	switch d.verb {
	case verbAck:
		err = j.msg.Ack()
	case verbTerm:
		err = j.msg.Term()
	case verbNakDelay:
		err = j.msg.NakWithDelay(d.delay)
	case verbNak:
		err = j.msg.Nak()
	}
	if err != nil {
		log().WarnContext(ctx, "settling failed", "verb", d.verb.String(), "error", err)
	}
	// Failures and retries are logged at info; a sent message only at
	// debug, as its result event already records it.
	if ev := cmp.Or(d.event, d.claimedEvent); ev != nil {
		level := slog.LevelInfo
		if ev.State == schema.StateSent {
			level = slog.LevelDebug
		}
		if w.log.Enabled(ctx, level) {
			w.log.Log(ctx, level, "result", "id", j.id, "attempt", j.attempt, "state", ev.State,
				"status", int(ev.Status), "verb", d.verb.String())
		}
	}
	if w.onDecision != nil {
		w.onDecision(j.id, d)
	}
}

// addBounce puts a recipient the server refused as unknown on the
// suppression list (contract §9), for the store's bounce TTL. A failure is
// logged and not retried: the message's outcome is stored already, and the
// next message to the address bounces again.
func (w *Worker) addBounce(ctx context.Context, j *job, r schema.RecipientResult) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ch, err := w.suppressions.Add(ctx, suppress.Entry{Address: r.Address, Reason: suppress.Bounce, Id: j.id}, 0)
	if err != nil {
		w.log.WarnContext(ctx, "cannot add a bounce to the suppression list", "id", j.id, "code", r.Code, "error", err)
		return
	}
	if ch.Stored {
		w.metrics.Bounces.Inc()
	}
}
