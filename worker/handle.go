package worker

import (
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

	"github.com/jetmail/jetmail/schema"
)

// headerRequestSeq is set on result events to the stream sequence of the
// request they are about, so that a redelivery of a request whose final
// result is already stored can be told from a new publish of the same Id.
const headerRequestSeq = "Jetmail-Request-Seq"

// job is one delivery of one request message.
type job struct {
	msg       jetstream.Msg
	id        string
	seq       uint64
	attempt   int
	firstSeen time.Time
	data      []byte
	accepted  jetstream.PubAckFuture // the 202 accepted event, awaited before settling
	// stopProgress stops the progress acks; settle calls it before the
	// ack verb, handle when it returns.
	stopProgress func()
}

// ackVerb is how a message is settled with JetStream.
type ackVerb uint8

const (
	verbAck      ackVerb = iota + 1 // done: sent, or already sent
	verbTerm                        // done: failed for good; never redeliver
	verbNakDelay                    // retry after delay
	verbNak                         // shutdown: redeliver at once, elsewhere
)

func (v ackVerb) String() string {
	return [...]string{"", "ack", "term", "nak-delay", "nak"}[v]
}

// decision is the effect of one delivery: the event to publish (if any),
// whether to copy the request to the dead-letter stream, and how to settle
// the message. handle computes it; settle carries it out.
type decision struct {
	event *schema.Result
	dead  bool
	verb  ackVerb
	delay time.Duration
	// outcome is the requests_total label this delivery adds, if any.
	outcome string
}

// senderPolicy is what a connection says about senders.
type senderPolicy struct {
	defaultFrom string
	allowed     []string
}

// allows reports whether addr may send through the connection: every
// sender when the list is empty, else an exact address or an "@domain".
func (p senderPolicy) allows(addr string) bool {
	if len(p.allowed) == 0 {
		return true
	}
	addr = strings.ToLower(addr)
	for _, a := range p.allowed {
		a = strings.ToLower(strings.TrimSpace(a))
		if strings.HasPrefix(a, "@") && strings.HasSuffix(addr, a) || a == addr {
			return true
		}
	}
	return false
}

// handle takes one message from decoding to settling. It never returns an
// error: every outcome is a decision, and a message that cannot be settled
// is redelivered by JetStream after AckWait.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	w.metrics.Inflight.Inc()
	defer w.metrics.Inflight.Dec()
	meta, err := msg.Metadata()
	if err != nil {
		w.log.ErrorContext(ctx, "message without JetStream metadata", "subject", msg.Subject(), "error", err)
		_ = msg.Term()
		return
	}
	j := &job{msg: msg, seq: meta.Sequence.Stream, attempt: int(meta.NumDelivered), firstSeen: meta.Timestamp, data: msg.Data()}
	// Progress acks run until the message is settled, not only during the
	// SMTP session: storing the result may take a while too (a NATS node
	// lost, a leader elected), and JetStream must not hand the message to
	// another worker meanwhile. A message left unsettled is redelivered
	// once they stop.
	j.stopProgress = w.keepInProgress(msg)
	defer j.stopProgress()
	req, verr := w.parse(j)
	j.id = requestID(req, msg.Headers(), meta)
	if req != nil {
		req.Id = j.id
	}
	base := schema.Result{Id: j.id, Attempt: j.attempt}
	if req != nil {
		base.Metadata = req.Metadata
	}

	var d decision
	if verr != nil {
		d = invalid(base, verr)
	} else if dup, ok := w.dedupe(ctx, j); ok {
		d = dup
	} else {
		d = w.deliver(ctx, j, req, base)
	}
	w.settle(ctx, j, d)
}

// parse decodes and validates the payload.
func (w *Worker) parse(j *job) (*schema.Request, error) {
	if n := len(j.data); n > w.cfg.Limits.MaxRequestBytes && w.cfg.Limits.MaxRequestBytes > 0 {
		return nil, &schema.ValidationError{Fields: []schema.FieldError{{
			Message:  fmt.Sprintf("request is %d bytes, more than the limit of %d", n, w.cfg.Limits.MaxRequestBytes),
			TooLarge: true,
		}}}
	}
	return prepare(j.data, w.cfg.Limits, w.templates)
}

// prepare decodes and validates a request payload and renders its
// template, validating the rendered request again (no CR or LF in the
// subject, limits). With nil templates a Template is left for the worker.
// The worker and the HTTP API both use it, so they agree on what is
// invalid.
func prepare(data []byte, lim schema.Limits, tmpl templates) (*schema.Request, error) {
	req, err := schema.Decode(data)
	if err != nil {
		return nil, err
	}
	if err := req.ValidateLimits(lim); err != nil {
		return req, err
	}
	if req.Template != "" && tmpl != nil {
		if err := tmpl.apply(req); err != nil {
			return req, err
		}
		if err := req.ValidateLimits(lim); err != nil {
			return req, err
		}
	}
	return req, nil
}

// requestID is the Id of a request: its Id key; else the Nats-Msg-Id
// header when that is a valid Id; else one derived from the stream
// position, which stays the same on every redelivery.
func requestID(req *schema.Request, h nats.Header, meta *jetstream.MsgMetadata) string {
	if req != nil && schema.ValidID(req.Id) {
		return req.Id
	}
	if v := h.Get(jetstream.MsgIDHeader); schema.ValidID(v) {
		return v
	}
	return fmt.Sprintf("jm-%d-%d", meta.Timestamp.UnixNano(), meta.Sequence.Stream)
}

// invalid is the decision for a request that breaks the contract.
func invalid(base schema.Result, err error) decision {
	ev := base
	ev.State, ev.Status, ev.Error = schema.StateFailed, schema.Status400, err.Error()
	var ve *schema.ValidationError
	if errors.As(err, &ve) {
		ev.Fields = ve.Fields
	}
	return decision{event: &ev, verb: verbTerm, outcome: "invalid"}
}

// dedupe looks up the latest result of the Id. A message already sent is
// acknowledged without sending again; a request whose final failure is
// already stored (a crash between publishing it and Term) is terminated.
func (w *Worker) dedupe(ctx context.Context, j *job) (decision, bool) {
	raw, err := w.results.GetLastMsgForSubject(ctx, w.cfg.Names.ResultSubject(j.id))
	if err != nil {
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			w.log.WarnContext(ctx, "status look-up failed; delivering anyway", "id", j.id, "error", err)
		}
		return decision{}, false
	}
	var last schema.Result
	if err := json.Unmarshal(raw.Data, &last); err != nil {
		return decision{}, false
	}
	switch {
	case last.State == schema.StateSent:
		return decision{verb: verbAck, outcome: "duplicate"}, true
	case last.State == schema.StateFailed && raw.Header.Get(headerRequestSeq) == strconv.FormatUint(j.seq, 10):
		return decision{verb: verbTerm, outcome: "duplicate"}, true
	}
	return decision{}, false
}

// deliver builds and sends a valid request and decides what follows.
func (w *Worker) deliver(ctx context.Context, j *job, req *schema.Request, base schema.Result) decision {
	conn := connName(req.Connection)
	if _, err := checkSender(w.senders, req); err != nil {
		var na *senderNotAllowedError
		if !errors.As(err, &na) {
			return invalid(base, err)
		}
		ev := base
		ev.State, ev.Status, ev.Error = schema.StateFailed, schema.Status403, err.Error()
		return decision{event: &ev, dead: true, verb: verbTerm, outcome: "invalid"}
	}
	env, err := Build(req, BuildOptions{DefaultFrom: w.senders[conn].defaultFrom, Date: j.firstSeen})
	if err != nil {
		return invalid(base, &schema.ValidationError{Fields: []schema.FieldError{{Field: "From", Message: err.Error()}}})
	}
	base.MessageId = "<" + env.MessageID + ">"
	if j.attempt > w.cfg.Retry.MaxAttempts {
		// Deliveries beyond MaxAttempts happen when a worker died holding
		// the message; do not start another attempt.
		ev := base
		ev.State, ev.Status = schema.StateFailed, schema.Status500
		ev.Error = fmt.Sprintf("delivered %d times, more than the %d attempts allowed", j.attempt, w.cfg.Retry.MaxAttempts)
		return decision{event: &ev, dead: true, verb: verbTerm}
	}
	if j.attempt == 1 {
		acc := base
		acc.State, acc.Status, acc.Time = schema.StateAccepted, schema.Status202, w.now()
		j.accepted = w.publishAsync(ctx, j, &acc)
		w.metrics.Requests.WithLabelValues("accepted").Inc()
	}

	start := time.Now()
	res, sendErr := w.transport.Send(ctx, env)
	elapsed := time.Since(start)
	if errors.Is(context.Cause(ctx), errShutdown) {
		return decision{verb: verbNak}
	}
	de := Classify(sendErr)
	outcome := "ok"
	if de != nil {
		outcome = de.Class.String()
	}
	w.metrics.SMTPAttempts.WithLabelValues(conn, outcome).Inc()
	w.metrics.SMTPSend.WithLabelValues(conn).Observe(elapsed.Seconds())
	switch {
	case de != nil:
		args := []any{"id", j.id, "attempt", j.attempt, "connection", conn, "op", de.Op,
			"class", de.Class.String(), "error", de.Err.Error(), "duration", elapsed}
		if de.Reply != nil {
			args = append(args, "smtp_code", de.Reply.Code, "smtp_enhanced", de.Reply.EnhancedCode)
		}
		w.log.WarnContext(ctx, "delivery failed", args...)
	case w.log.Enabled(ctx, slog.LevelDebug): // no logging cost on the hot path otherwise
		w.log.DebugContext(ctx, "delivered", "id", j.id, "attempt", j.attempt, "connection", conn,
			"duration", elapsed, "recipients", len(env.To))
	}
	return decide(base, res, de, j.attempt, j.firstSeen, w.now(), w.cfg.Retry)
}

// decide is the decision table of a delivery attempt (DESIGN.md): sent →
// 200 and Ack; transient with attempts and age left → 202 deferred and
// NakWithDelay; transient otherwise, or permanent → failed, dead letter and
// Term. It is a pure function.
func decide(base schema.Result, res Delivery, de *DeliveryError, attempt int, firstSeen, now time.Time, p RetryPolicy) decision {
	ev := base
	ev.Time = now
	if de == nil {
		ev.State, ev.Status, ev.Smtp, ev.Recipients = schema.StateSent, schema.Status200, res.Reply, res.Rejected
		return decision{event: &ev, verb: verbAck}
	}
	ev.Smtp, ev.Recipients, ev.Error = de.Reply, de.Recipients, de.Error()
	if de.Class == Transient {
		if next, ok := p.Next(attempt, firstSeen, now); ok {
			ev.State, ev.Status = schema.StateDeferred, schema.Status202
			ev.NextAttemptAt = &next
			return decision{event: &ev, verb: verbNakDelay, delay: next.Sub(now)}
		}
		ev.Error = fmt.Sprintf("gave up after %d attempts over %s: %s", attempt, now.Sub(firstSeen).Round(time.Second), de.Error())
	}
	ev.State, ev.Status = schema.StateFailed, de.Status
	return decision{event: &ev, dead: true, verb: verbTerm}
}

// keepInProgress sends progress acks every AckWait/3 until the returned
// function is called, so that a message whose SMTP session or settling is
// slow is not redelivered to another worker. The function may be called
// more than once; once it has returned, no progress ack is sent.
func (w *Worker) keepInProgress(msg jetstream.Msg) (stop func()) {
	every := w.cfg.AckWait / 3
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(every)
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
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
	if j.accepted != nil {
		timer := time.NewTimer(10 * time.Second)
		select {
		case <-j.accepted.Ok():
		case err := <-j.accepted.Err():
			log().WarnContext(ctx, "accepted event not stored", "error", err)
		case <-timer.C:
			log().WarnContext(ctx, "accepted event not acknowledged in time")
		}
		timer.Stop()
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
	if d.event != nil {
		if err := w.publishResult(ctx, j, d.event); err != nil {
			log().ErrorContext(ctx, "cannot store result; leaving the message for redelivery", "state", d.event.State, "error", err)
			return
		}
		if d.event.Final() {
			w.metrics.DeliveryLatency.Observe(d.event.Time.Sub(j.firstSeen).Seconds())
		}
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
	if d.event != nil {
		level := slog.LevelInfo
		if d.event.State == schema.StateSent {
			level = slog.LevelDebug
		}
		if w.log.Enabled(ctx, level) {
			w.log.Log(ctx, level, "result", "id", j.id, "attempt", j.attempt, "state", d.event.State,
				"status", int(d.event.Status), "verb", d.verb.String())
		}
	}
	if w.onDecision != nil {
		w.onDecision(j.id, d)
	}
}

// resultMsg is the NATS message of a result event. Its Nats-Msg-Id makes a
// republish after a crash a no-op within the result stream's window.
func (w *Worker) resultMsg(j *job, ev *schema.Result) (*nats.Msg, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode result: %w", err)
	}
	m := nats.NewMsg(w.cfg.Names.ResultSubject(j.id))
	m.Data = data
	msgID := fmt.Sprintf("%s.%s.%d.%d", j.id, ev.State, j.seq, j.attempt)
	if ev.Final() {
		// One final result per request (stream sequence), whatever the
		// attempt: when JetStream hands a request to two handlers at once
		// (a consumer leader failing over), the second final event is
		// dropped instead of changing a status that was already final.
		msgID = fmt.Sprintf("%s.final.%d", j.id, j.seq)
	}
	m.Header.Set(jetstream.MsgIDHeader, msgID)
	m.Header.Set(headerRequestSeq, strconv.FormatUint(j.seq, 10))
	return m, nil
}

// publishResult stores ev and waits for JetStream's acknowledgement.
func (w *Worker) publishResult(ctx context.Context, j *job, ev *schema.Result) error {
	m, err := w.resultMsg(j, ev)
	if err != nil {
		return err
	}
	ack, err := w.publishDurable(ctx, m)
	if err != nil {
		return fmt.Errorf("publish %s result: %w", ev.State, err)
	}
	if !ack.Duplicate {
		w.metrics.Results.WithLabelValues(string(ev.State), ev.Status.String()).Inc()
	}
	return nil
}

// publishDurable stores m and waits for JetStream's acknowledgement, for up
// to 30s (progress acks keep the request meanwhile). A try that gets no
// answer within 5s is made again: the request may have been lost with a
// connection to a node that went away, or sent while a stream leader was
// being elected, and giving up would leave a sent message to be redelivered
// and sent again. m carries a Nats-Msg-Id, so JetStream stores it once
// however many times it arrives; a subscriber may see the event twice. The
// try timeout is well above a loaded server's acknowledgement time (fsync
// per write included), so that this is rare.
func (w *Worker) publishDurable(ctx context.Context, m *nats.Msg) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		ack, err := w.js.PublishMsg(tctx, m)
		tcancel()
		if err == nil {
			return ack, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// publishAsync starts storing ev without waiting; settle awaits it.
func (w *Worker) publishAsync(ctx context.Context, j *job, ev *schema.Result) jetstream.PubAckFuture {
	m, err := w.resultMsg(j, ev)
	if err != nil {
		w.log.ErrorContext(ctx, "cannot encode result", "error", err)
		return nil
	}
	f, err := w.js.PublishMsgAsync(m)
	if err != nil {
		w.log.WarnContext(ctx, "cannot publish result", "id", j.id, "state", ev.State, "error", err)
		return nil
	}
	w.metrics.Results.WithLabelValues(string(ev.State), ev.Status.String()).Inc()
	return f
}

// publishDead copies the request with its final result to mail.dead.<Id>.
func (w *Worker) publishDead(ctx context.Context, j *job, final *schema.Result) error {
	dl := schema.DeadLetter{Request: json.RawMessage(j.data), Subject: j.msg.Subject(), Result: *final}
	if !json.Valid(j.data) {
		dl.Request = nil
	}
	data, err := json.Marshal(dl)
	if err != nil {
		return fmt.Errorf("encode dead letter: %w", err)
	}
	m := nats.NewMsg(w.cfg.Names.DeadSubject(j.id))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s.dead.%d", j.id, j.seq))
	if _, err := w.publishDurable(ctx, m); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	w.metrics.DeadLetters.Inc()
	return nil
}
