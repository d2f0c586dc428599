package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/tracing"
)

// headerRequestSeq is set on result events to the stream sequence of the
// request they are about, so that a redelivery of a request whose final
// result is already stored can be told from a new publish of the same Id.
const headerRequestSeq = "Jetmail-Request-Seq"

// resultMsg is the NATS message of a result event. Its Nats-Msg-Id makes a
// republish after a crash a no-op within the result stream's window.
func (w *Worker) resultMsg(j *job, ev *schema.Result) (*nats.Msg, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode result: %w", err)
	}
	m := nats.NewMsg(w.cfg.Names.ResultSubject(j.id))
	m.Data = data
	// The event continues the delivery's trace (contract §12).
	tracing.Inject(trace.ContextWithSpanContext(context.Background(), j.span), m.Header)
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
	ack, err := w.publishDurable(ctx, j.stop, m)
	if err != nil {
		return fmt.Errorf("publish %s result: %w", ev.State, err)
	}
	if !ack.Duplicate {
		w.metrics.Results.WithLabelValues(string(ev.State), ev.Status.String()).Inc()
	}
	return nil
}

// publishDurable stores m and waits for JetStream's acknowledgement. A try
// that gets no answer within 5s is made again: the request may have been
// lost with a connection to a node that went away, or sent while a stream
// leader was being elected, or NATS may be away or frozen. m carries a
// Nats-Msg-Id, so JetStream stores it once however many times it arrives;
// a subscriber may see the event twice. The try timeout is well above a
// loaded server's acknowledgement time (fsync per write included), so that
// this is rare.
//
// Tries that JetStream answers with an error are made for up to 30s. Tries
// that get no answer at all go on for as long as that lasts (progress acks
// keep the request meanwhile), until ctx ends, or, once 30s have passed,
// until stop is closed (the worker's grace period is over): giving up
// while NATS is away would leave a sent message to be redelivered and
// sent again when it is back.
//
// The PubAck of a try after one whose answer was lost says Duplicate when
// that lost try was stored (a publish buffered while NATS was away is
// stored once it is back): publishDurable then clears Duplicate, since the
// message was stored by this call, and the caller counts it.
func (w *Worker) publishDurable(ctx context.Context, stop <-chan struct{}, m *nats.Msg) (*jetstream.PubAck, error) {
	deadline := time.Now().Add(30 * time.Second)
	lost := false // a try got no answer: it may have been stored
	for {
		tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
		ack, err := w.js.PublishMsg(tctx, m)
		tcancel()
		if err == nil && ack.Duplicate && lost {
			ack.Duplicate = false
		}
		if err == nil || isWrongLastSequence(err) || w.js.Conn().IsClosed() {
			return ack, err
		}
		timedOut := ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout))
		lost = lost || timedOut
		noAnswer := timedOut || !w.js.Conn().IsConnected()
		if time.Now().After(deadline) {
			select {
			case <-stop:
				return nil, err
			default:
			}
			if !noAnswer {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// errClaimLost is returned by publishClaim when the Id's result subject
// had another event than expected: someone (a canceller, another worker)
// got there first.
var errClaimLost = errors.New("another event was stored first")

// publishClaim stores ev only if the latest event of the Id is still the
// one at stream sequence expect (0: none), so that a worker and a
// canceller cannot both think they decided the message: the first event a
// delivery publishes (accepted, scheduled, cancelled) is such a claim.
func (w *Worker) publishClaim(ctx context.Context, j *job, ev *schema.Result, expect uint64) (seq uint64, err error) {
	m, err := w.resultMsg(j, ev)
	if err != nil {
		return 0, err
	}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expect, 10))
	ack, err := w.publishDurable(ctx, j.stop, m)
	switch {
	case isWrongLastSequence(err):
		return 0, errClaimLost
	case err != nil:
		return 0, fmt.Errorf("publish %s result: %w", ev.State, err)
	}
	if !ack.Duplicate {
		w.metrics.Results.WithLabelValues(string(ev.State), ev.Status.String()).Inc()
	}
	return ack.Sequence, nil
}

// isWrongLastSequence reports whether err is JetStream's refusal of a
// conditional publish (10071, or 10164 on a replicated stream).
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// headerRequestID carries a request's Id on its parked copy, whose
// Nats-Msg-Id JetStream removes when the schedule fires.
const headerRequestID = "Jetmail-Id"

// publishSchedule parks the request of j on its schedule subject until
// sendAt: JetStream then publishes it, unchanged but for the schedule
// headers, onto the lane subject it arrived on (contract §8). A schedule
// published twice (a redelivery) replaces itself.
func (w *Worker) publishSchedule(ctx context.Context, j *job, sendAt time.Time) error {
	m := nats.NewMsg(w.cfg.Names.ScheduleSubject(j.id))
	m.Data = j.data
	for k, v := range j.msg.Headers() {
		if !strings.HasPrefix(k, "Nats-") {
			m.Header[k] = v
		}
	}
	m.Header.Set(headerRequestID, j.id)
	m.Header.Set("Nats-Schedule", "@at "+sendAt.UTC().Format(time.RFC3339Nano))
	m.Header.Set("Nats-Schedule-Target", j.msg.Subject())
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s.schedule.%d", j.id, j.seq))
	if _, err := w.publishDurable(ctx, j.stop, m); err != nil {
		return fmt.Errorf("park until %s: %w", sendAt.Format(time.RFC3339), err)
	}
	return nil
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
	if _, err := w.publishDurable(ctx, j.stop, m); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	w.metrics.DeadLetters.Inc()
	return nil
}
