package producer

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// Events returns every result event of the request with the given Id that
// the result stream still holds, oldest first: the message's history
// (accepted, deferred…, then sent or failed), as stored when Events was
// called. The stream keeps up to 32 events per Id, for 7 days by default.
//
// It returns an error wrapping ErrNotFound when the Id has no result event,
// ErrInvalidID for an Id that breaks the contract, ErrNoStream when the
// result stream does not exist, and ErrMalformed when a stored event does
// not decode.
func (p *Producer) Events(ctx context.Context, id string) ([]*schema.Result, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{p.names.ResultSubject(id)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	var out []*schema.Result
	for msg, err := range p.readStream(ctx, p.names.ResultStream, cfg, false, "events of "+id) {
		if err != nil {
			return nil, err
		}
		res, err := decodeResult(msg.Data())
		if err != nil {
			return nil, fmt.Errorf("%w result event %s of %s: %w", ErrMalformed, seqOf(msg), id, err)
		}
		out = append(out, res)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w for %s", ErrNotFound, id)
	}
	return out, nil
}
