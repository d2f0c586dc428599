package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// CancelOutcome is what Cancel found and did.
type CancelOutcome int

// The outcomes of Cancel.
const (
	// Cancelled means the message was waiting (scheduled, queued, or
	// deferred between retries) and is now cancelled: its final event is
	// 410 cancelled and it will never be sent.
	Cancelled CancelOutcome = iota + 1
	// AlreadyCancelled means it was cancelled before; nothing changed.
	AlreadyCancelled
	// TooLateFinal means it is already sent or failed.
	TooLateFinal
	// TooLateSending means a worker has begun its SMTP transaction.
	TooLateSending
	// Unknown means no event and no waiting request of the Id was found.
	Unknown
)

// String returns what `jetmail cancel` prints: "cancelled", "too late
// (sent)", "too late (failed)", "too late (sending)" or "unknown".
func (o CancelOutcome) String() string {
	switch o {
	case Cancelled, AlreadyCancelled:
		return "cancelled"
	case TooLateSending:
		return "too late (sending)"
	case Unknown:
		return "unknown"
	}
	return "too late"
}

// CancelResult is the outcome of cancelling one message.
type CancelResult struct {
	// Outcome says what happened.
	Outcome CancelOutcome
	// Event is the message's cancelled event (Cancelled, AlreadyCancelled)
	// or its latest event (TooLateFinal, TooLateSending); nil for Unknown.
	Event *schema.Result
}

// String is Outcome's text, with the final state when it is too late.
func (r CancelResult) String() string {
	if r.Outcome == TooLateFinal && r.Event != nil {
		return "too late (" + string(r.Event.State) + ")"
	}
	return r.Outcome.String()
}

// cancelWait bounds how long Cancel waits for a worker that may be about
// to begin (or be in) an SMTP transaction of the message, before it says
// TooLateSending: the SMTP timeout, so that a transaction that began
// before the cancellation ends within it.
const cancelWait = 30 * time.Second

// cancelMargin is how close to a deferred message's NextAttemptAt a worker
// may already be retrying it.
const cancelMargin = 2 * time.Second

// Cancel cancels the message with the given Id (contract §8). A message
// that is scheduled, waiting in the queue, or deferred between retries
// gets one final event, 410 cancelled, and is never sent afterwards by any
// worker; one whose SMTP transaction has begun, or that is final, is too
// late. Cancelling a cancelled message changes nothing.
//
// How: Cancel first writes a cancellation mark (in the JETMAIL_CANCELLED
// bucket), which every worker checks before it begins a transaction. Then
// it publishes the cancelled event itself, conditionally on the latest
// event it saw, when no worker can be sending the message: it is
// scheduled (the schedule is removed), deferred with its next attempt
// still ahead, or only queued. When a worker may hold it (its latest event
// is accepted, or its next attempt is due), Cancel waits for that worker's
// next event, for at most the SMTP timeout: the worker either sees the
// mark and publishes cancelled, or publishes its outcome. An Id with no
// event is looked for among the waiting requests (by their Nats-Msg-Id
// header); if it is not there either, Cancel returns Unknown and leaves
// the mark, so that a request published a moment later is cancelled
// too.
//
// The errors wrap ErrInvalidID and ErrNoStream as Status does.
func (p *Producer) Cancel(ctx context.Context, id string) (CancelResult, error) {
	if err := checkID(id); err != nil {
		return CancelResult{}, err
	}
	if err := p.mark(ctx, "id."+id); err != nil {
		return CancelResult{}, err
	}
	results, err := p.js.Stream(ctx, p.names.ResultStream)
	if err != nil {
		return CancelResult{}, p.streamError(p.names.ResultStream, "cancel "+id, err)
	}
	deadline := time.Now().Add(cancelWait)
	for {
		last, seq, err := p.latest(ctx, results, id)
		if err != nil {
			return CancelResult{}, err
		}
		switch {
		case last == nil:
			found, err := p.queued(ctx, map[string]bool{id: true})
			if err != nil {
				return CancelResult{}, err
			}
			if !found[id] {
				return CancelResult{Outcome: Unknown}, nil
			}
		case last.State == schema.StateCancelled:
			return CancelResult{Outcome: AlreadyCancelled, Event: last}, nil
		case last.Final():
			return CancelResult{Outcome: TooLateFinal, Event: last}, nil
		case last.State == schema.StateAccepted,
			last.State == schema.StateDeferred && (last.NextAttemptAt == nil || time.Until(*last.NextAttemptAt) < cancelMargin):
			// A worker may hold it: wait for its next event.
			if time.Now().After(deadline) {
				return CancelResult{Outcome: TooLateSending, Event: last}, nil
			}
			select {
			case <-ctx.Done():
				return CancelResult{}, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			continue
		case last.State == schema.StateScheduled:
			if err := p.unschedule(ctx, id); err != nil {
				return CancelResult{}, err
			}
		}
		ev, err := p.publishCancelled(ctx, id, last, seq)
		if errors.Is(err, errConflict) {
			continue // another event came first: look again
		}
		if err != nil {
			return CancelResult{}, err
		}
		return CancelResult{Outcome: Cancelled, Event: ev}, nil
	}
}

// BatchCancelResult is the outcome of cancelling a batch.
type BatchCancelResult struct {
	// Cancelled is how many messages of the batch this call cancelled
	// (or found cancelled).
	Cancelled int
	// TooLate is how many were already sent or failed, or being sent.
	TooLate int
	// Published is how many of the Cancelled this call cancelled itself,
	// publishing their cancelled events (the others were cancelled by
	// workers, or before).
	Published int
	// Messages is the outcome of every message of the batch that was
	// found, in Id order: one entry for each message counted in Cancelled
	// or TooLate. It is empty when the batch has no message (yet).
	Messages []BatchCancelMessage
}

// BatchCancelMessage is the outcome of cancelling one message of a batch.
type BatchCancelMessage struct {
	// Id is the message's Id.
	Id string
	// Result says what CancelBatch found and did, as Cancel would say it:
	// Cancelled (this call published its cancelled event),
	// AlreadyCancelled (cancelled before, or by a worker that saw the
	// batch's mark), TooLateFinal (sent or failed), or TooLateSending (a
	// worker holds it or has begun sending it; CancelBatch does not wait
	// for that worker, so a later Cancel of the Id may still find it
	// cancelled). Never Unknown.
	Result CancelResult
}

// add records the outcome of one message of the batch and counts it.
func (r *BatchCancelResult) add(id string, res CancelResult) {
	r.Messages = append(r.Messages, BatchCancelMessage{Id: id, Result: res})
	switch res.Outcome {
	case Cancelled:
		r.Cancelled++
		r.Published++
	case AlreadyCancelled:
		r.Cancelled++
	default:
		r.TooLate++
	}
}

// CancelBatch cancels every message of the batch that is not yet sent
// (contract §8). It writes the batch's cancellation mark, which every
// worker checks before it begins a transaction (so a message of the batch
// published later is cancelled too), then looks at the latest event of
// every message in the result stream and at every request still waiting
// in the request stream, and cancels each message of the batch that
// waits, as Cancel does but without waiting for workers that may hold a
// message: those count as TooLate (TooLateSending in Messages), unless a
// worker cancelled them before CancelBatch looked.
func (p *Producer) CancelBatch(ctx context.Context, batch string) (BatchCancelResult, error) {
	var r BatchCancelResult
	if !schema.ValidID(batch) {
		return r, fmt.Errorf("%w %q: want [A-Za-z0-9_-]{1,128}", ErrInvalidID, batch)
	}
	if err := p.mark(ctx, "batch."+batch); err != nil {
		return r, err
	}
	results, err := p.js.Stream(ctx, p.names.ResultStream)
	if err != nil {
		return r, p.streamError(p.names.ResultStream, "cancel batch "+batch, err)
	}
	// The waiting requests first, then the events: a message moves from
	// the first (no event yet) to the second, never back, so each is found
	// in one of the two.
	waiting, err := p.waitingOfBatch(ctx, batch)
	if err != nil {
		return r, err
	}
	seen := map[string]bool{}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{p.names.ResultSubjects()},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	}
	for msg, err := range p.readStream(ctx, p.names.ResultStream, cfg, false, "cancel batch "+batch) {
		if err != nil {
			return r, err
		}
		if !bytes.Contains(msg.Data(), []byte(batch)) {
			continue
		}
		last, err := decodeResult(msg.Data())
		if err != nil || last.BatchId != batch || seen[last.Id] {
			continue
		}
		seen[last.Id] = true
		md, _ := msg.Metadata()
		switch {
		case last.State == schema.StateCancelled:
			r.add(last.Id, CancelResult{Outcome: AlreadyCancelled, Event: last})
			continue
		case last.Final():
			r.add(last.Id, CancelResult{Outcome: TooLateFinal, Event: last})
			continue
		case last.State == schema.StateAccepted,
			last.State == schema.StateDeferred && (last.NextAttemptAt == nil || time.Until(*last.NextAttemptAt) < cancelMargin):
			r.add(last.Id, CancelResult{Outcome: TooLateSending, Event: last})
			continue
		case last.State == schema.StateScheduled:
			if err := p.unschedule(ctx, last.Id); err != nil {
				return r, err
			}
		}
		if err := p.cancelOne(ctx, results, last.Id, last, md.Sequence.Stream, &r); err != nil {
			return r, err
		}
	}
	// Requests of the batch that no worker had taken have no event.
	for _, id := range waiting {
		if seen[id] {
			continue
		}
		seen[id] = true
		if err := p.cancelOne(ctx, results, id, &schema.Result{Id: id, BatchId: batch}, 0, &r); err != nil {
			return r, err
		}
	}
	slices.SortFunc(r.Messages, func(a, b BatchCancelMessage) int { return strings.Compare(a.Id, b.Id) })
	return r, nil
}

// cancelOne publishes the cancelled event of a message of a batch and
// records it. When another event came first (a worker that saw the batch's
// mark and cancelled it, or one that began sending it), it records what
// that event says.
func (p *Producer) cancelOne(ctx context.Context, results jetstream.Stream, id string, last *schema.Result, seq uint64, r *BatchCancelResult) error {
	ev, err := p.publishCancelled(ctx, id, last, seq)
	switch {
	case err == nil:
		r.add(id, CancelResult{Outcome: Cancelled, Event: ev})
	case errors.Is(err, errConflict):
		now, _, err := p.latest(ctx, results, id)
		if err != nil {
			return err
		}
		switch {
		case now != nil && now.State == schema.StateCancelled:
			r.add(id, CancelResult{Outcome: AlreadyCancelled, Event: now})
		case now != nil && now.Final():
			r.add(id, CancelResult{Outcome: TooLateFinal, Event: now})
		default:
			r.add(id, CancelResult{Outcome: TooLateSending, Event: now})
		}
	default:
		return err
	}
	return nil
}

// errConflict says a conditional publish found another latest event.
var errConflict = errors.New("producer: the message changed meanwhile")

// mark writes a cancellation mark.
func (p *Producer) mark(ctx context.Context, key string) error {
	kv, err := p.js.KeyValue(ctx, p.names.CancelBucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return &noStreamError{what: p.names.CancelBucket, cause: err}
		}
		return fmt.Errorf("producer: cancel: %w", err)
	}
	v, _ := json.Marshal(map[string]any{"Time": time.Now().UTC()})
	if _, err := kv.Put(ctx, key, v); err != nil {
		return fmt.Errorf("producer: cancel: mark %s: %w", key, err)
	}
	return nil
}

// latest returns the latest event of id and its sequence, or nil.
func (p *Producer) latest(ctx context.Context, results jetstream.Stream, id string) (*schema.Result, uint64, error) {
	m, err := results.GetLastMsgForSubject(ctx, p.names.ResultSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, p.streamError(p.names.ResultStream, "cancel "+id, err)
	}
	res, err := decodeResult(m.Data)
	if err != nil {
		return nil, 0, fmt.Errorf("producer: cancel %s: %w", id, err)
	}
	return res, m.Sequence, nil
}

// unschedule removes the parked copy of a scheduled request, so that it is
// never published onto its lane.
func (p *Producer) unschedule(ctx context.Context, id string) error {
	st, err := p.js.Stream(ctx, p.names.RequestStream)
	if err != nil {
		return p.streamError(p.names.RequestStream, "cancel "+id, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(p.names.ScheduleSubject(id))); err != nil {
		return fmt.Errorf("producer: cancel %s: remove its schedule: %w", id, err)
	}
	return nil
}

// publishCancelled publishes the 410 cancelled event of id, conditionally
// on the latest event being the one at seq (0: none). last gives the
// fields it keeps (Lane, BatchId, Metadata, MessageId).
func (p *Producer) publishCancelled(ctx context.Context, id string, last *schema.Result, seq uint64) (*schema.Result, error) {
	ev := &schema.Result{Id: id, Status: schema.Status410, State: schema.StateCancelled, Error: "cancelled before it was sent",
		Time: time.Now().UTC()}
	if last != nil {
		ev.Attempt, ev.MessageId, ev.Lane, ev.BatchId, ev.Metadata = last.Attempt, last.MessageId, last.Lane, last.BatchId, last.Metadata
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(p.names.ResultSubject(id))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, id+".cancelled."+strconv.FormatUint(seq, 10))
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := p.js.PublishMsg(pctx, m); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return nil, errConflict
		}
		return nil, fmt.Errorf("producer: cancel %s: %w", id, err)
	}
	return ev, nil
}

// queued reports which of ids have a request waiting in the request
// stream, by its Id header (Nats-Msg-Id, or Jetmail-Id on a parked one).
func (p *Producer) queued(ctx context.Context, ids map[string]bool) (map[string]bool, error) {
	found := map[string]bool{}
	err := p.scanRequests(ctx, func(_ string, hdr nats.Header, _ []byte) {
		for _, h := range []string{jetstream.MsgIDHeader, "Jetmail-Id"} {
			if v := hdr.Get(h); ids[v] {
				found[v] = true
			}
		}
	})
	return found, err
}

// waitingOfBatch returns the Ids of the requests of batch waiting in the
// request stream.
func (p *Producer) waitingOfBatch(ctx context.Context, batch string) ([]string, error) {
	var ids []string
	err := p.scanRequests(ctx, func(_ string, hdr nats.Header, data []byte) {
		if !bytes.Contains(data, []byte(batch)) {
			return
		}
		req, err := schema.Decode(data)
		if err != nil || req.BatchId != batch {
			return
		}
		id := req.Id
		for _, h := range []string{"Jetmail-Id", jetstream.MsgIDHeader} {
			if v := hdr.Get(h); id == "" && schema.ValidID(v) {
				id = v
			}
		}
		if id != "" {
			ids = append(ids, id)
		}
	})
	return ids, err
}
