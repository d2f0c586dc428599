package producer

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// readStream yields the messages of stream that cfg selects, in stream
// order, through an ordered consumer that is deleted when iteration stops.
// It is the one reading loop of the package, behind Results and
// DeadLetters.
//
// Without follow the sequence ends once it has yielded the last message
// that was stored when iteration began (or the last there is, when later
// ones expired before they could be read); with follow it goes on until ctx
// ends or the loop breaks. A missing stream yields an error wrapping
// ErrNoStream; any other error, and ctx's error when ctx ends, is yielded
// last.
func (p *Producer) readStream(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig, follow bool, op string) iter.Seq2[jetstream.Msg, error] {
	return func(yield func(jetstream.Msg, error) bool) {
		var lastSeq uint64
		if !follow {
			s, err := p.js.Stream(ctx, stream)
			if err != nil {
				yield(nil, p.streamError(stream, op, err))
				return
			}
			info := s.CachedInfo()
			if info.State.Msgs == 0 {
				return
			}
			lastSeq = info.State.LastSeq
		}
		cons, err := p.js.OrderedConsumer(ctx, stream, cfg)
		if err != nil {
			yield(nil, p.streamError(stream, op, err))
			return
		}
		defer p.deleteConsumer(ctx, stream, cons)
		if !follow {
			// Nothing the filter selects, though the stream has messages:
			// there is nothing to wait for.
			if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
				return
			}
		}
		it, err := cons.Messages()
		if err != nil {
			yield(nil, fmt.Errorf("producer: %s: %w", op, err))
			return
		}
		defer it.Stop()
		for {
			msg, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				if ctx.Err() != nil {
					err = ctx.Err()
				}
				yield(nil, fmt.Errorf("producer: %s: %w", op, err))
				return
			}
			md, err := msg.Metadata()
			if err != nil {
				yield(nil, fmt.Errorf("producer: %s: %w", op, err))
				return
			}
			if !follow && md.Sequence.Stream > lastSeq {
				return // stored after iteration began
			}
			if !yield(msg, nil) {
				return
			}
			if !follow && (md.Sequence.Stream >= lastSeq || md.NumPending == 0) {
				return
			}
		}
	}
}

// streamError adds op to an error from reading stream, and turns a missing
// stream into ErrNoStream.
func (p *Producer) streamError(stream, op string, err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return &noStreamError{what: stream, cause: err}
	}
	return fmt.Errorf("producer: %s: %w", op, err)
}

// deleteConsumer removes an ordered consumer from the server at once, rather
// than leaving it until its inactivity threshold (5 minutes). Failing to is
// harmless: the server would delete it then.
func (p *Producer) deleteConsumer(ctx context.Context, stream string, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = p.js.DeleteConsumer(ctx, stream, info.Name)
}
