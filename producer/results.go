package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"

	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nats.go/jetstream"
)

// Status returns the latest result event of the request with the given Id,
// which is the message's status: accepted, deferred, sent or failed.
//
// It returns an error wrapping ErrNotFound when the Id has no result event
// (never published, not yet taken by a worker, or expired from the result
// stream, which keeps events for 7 days by default), ErrInvalidID for an Id
// that breaks the contract, and ErrNoStream when the result stream does not
// exist.
func (p *Producer) Status(ctx context.Context, id string) (*schema.Result, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	s, err := p.js.Stream(ctx, p.names.ResultStream)
	if err != nil {
		return nil, p.streamError(p.names.ResultStream, "status of "+id, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, p.names.ResultSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w for %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, p.streamError(p.names.ResultStream, "status of "+id, err)
	}
	res, err := decodeResult(m.Data)
	if err != nil {
		return nil, fmt.Errorf("producer: status of %s: result event %d: %w", id, m.Sequence, err)
	}
	return res, nil
}

// Wait blocks until the request with the given Id has a final result (state
// sent or failed) and returns it, or until ctx ends. A final result stored
// before Wait was called is found as well, so calling Wait after Publish
// never misses the outcome, however fast the worker.
//
// When ctx ends first, Wait returns an error that wraps ctx.Err() (and the
// context's cause, when it has one) and tells the last interim state seen,
// such as
//
//	producer: waiting for 8F3k...: context deadline exceeded (last state: deferred)
//
// Deferred messages may wait hours for their next attempt (see the
// NextAttemptAt of the interim result), so give ctx a deadline that fits.
// Wait returns an error wrapping ErrInvalidID for an Id that breaks the
// contract, and ErrNoStream when the result stream does not exist.
//
// Each Wait reads through its own ordered consumer on the result stream,
// filtered to the Id, and deletes it on return. To follow many Ids at once
// (a batch), range over Results with follow set instead.
func (p *Producer) Wait(ctx context.Context, id string) (*schema.Result, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	// The last event of the Id so far, then every new one: no gap between
	// looking and listening.
	cons, err := p.js.OrderedConsumer(ctx, p.names.ResultStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{p.names.ResultSubject(id)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil, waitError(ctx, id, "")
		}
		return nil, p.streamError(p.names.ResultStream, "waiting for "+id, err)
	}
	defer p.deleteConsumer(ctx, p.names.ResultStream, cons)
	it, err := cons.Messages(jetstream.PullMaxMessages(16))
	if err != nil {
		return nil, fmt.Errorf("producer: waiting for %s: %w", id, err)
	}
	defer it.Stop()

	var last schema.State
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil, waitError(ctx, id, last)
			}
			return nil, fmt.Errorf("producer: waiting for %s: %w", id, err)
		}
		res, err := decodeResult(msg.Data())
		if err != nil {
			return nil, fmt.Errorf("producer: waiting for %s: result event %s: %w", id, seqOf(msg), err)
		}
		if res.Final() {
			return res, nil
		}
		last = res.State
	}
}

// waitError is the error of a Wait whose context ended.
func waitError(ctx context.Context, id string, last schema.State) error {
	seen := "no result yet"
	if last != "" {
		seen = "last state: " + string(last)
	}
	err := ctx.Err()
	if cause := context.Cause(ctx); cause != nil && cause != err {
		return fmt.Errorf("producer: waiting for %s: %w: %w (%s)", id, err, cause, seen)
	}
	return fmt.Errorf("producer: waiting for %s: %w (%s)", id, err, seen)
}

// Results returns the result events of all Ids in the order they were
// stored, from the start of the result stream, for `jetmail results`.
//
// Without follow, the sequence ends once it has yielded the last event that
// was stored when iteration began; with follow, it goes on with new events
// until ctx ends or the loop breaks. Each iteration reads through its own
// ordered consumer, deleted when iteration stops, and the sequence may be
// ranged over more than once.
//
// An event that does not decode yields a nil result and an error, and
// iteration goes on. Any other error, such as one wrapping ErrNoStream
// when the result stream does not exist, or ctx's error when ctx ends, is
// yielded last. So a follow loop ends with ctx's error, which a caller that
// cancelled it on purpose may ignore.
func (p *Producer) Results(ctx context.Context, follow bool) iter.Seq2[*schema.Result, error] {
	return func(yield func(*schema.Result, error) bool) {
		cfg := jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{p.names.ResultSubjects()},
			DeliverPolicy:  jetstream.DeliverAllPolicy,
		}
		for msg, err := range p.readStream(ctx, p.names.ResultStream, cfg, follow, "reading results") {
			if err != nil {
				yield(nil, err)
				return
			}
			res, err := decodeResult(msg.Data())
			if err != nil {
				err = fmt.Errorf("%w result event %s on %s: %w", ErrMalformed, seqOf(msg), msg.Subject(), err)
			}
			if !yield(res, err) {
				return
			}
		}
	}
}

func checkID(id string) error {
	if !schema.ValidID(id) {
		return fmt.Errorf("%w %q: want [A-Za-z0-9_-]{1,128}", ErrInvalidID, id)
	}
	return nil
}

func decodeResult(data []byte) (*schema.Result, error) {
	var r schema.Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding result: %w", err)
	}
	return &r, nil
}

// seqOf is the stream sequence of msg, for error messages.
func seqOf(msg jetstream.Msg) string {
	if md, err := msg.Metadata(); err == nil {
		return fmt.Sprint(md.Sequence.Stream)
	}
	return "on " + msg.Subject()
}
