package suppress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Event is what jetmail publishes after an unsubscribe, on
// mail.event.unsubscribe.<Id> in the result stream (schema.Names.
// EventSubject), so that webhooks and CRMs learn of it. Its JSON is the
// contract's (schema/suppression.schema.json, $defs/unsubscribeEvent).
type Event struct {
	// Address is the canonical address that unsubscribed.
	Address string `json:"Address"`
	// Time is when.
	Time time.Time `json:"Time"`
	// Id is unique to the event (and its Nats-Msg-Id), for receivers to
	// drop duplicates. It is not a message Id: a token names an address,
	// not the message it came in.
	Id string `json:"Id"`
}

// EventKind is the event subject token of unsubscribes:
// mail.event.unsubscribe.<Id>.
const EventKind = "unsubscribe"

// ErrEvent wraps the failure to publish the Event of an unsubscribe that
// was stored.
var ErrEvent = errors.New("unsubscribe event not published")

// Unsubscribe adds address with reason unsubscribe, as a one-click
// unsubscribe does, and publishes an Event unless the address was already
// unsubscribed (a second click, a mail provider's retry). The address is
// canonical, as Tokens.Address returns it (it is not parsed again: the
// canonical form of an address with quotes in its local part may read as
// another address); else the error wraps ErrInvalidAddress. It returns
// the Change and the event published (nil when none). An address with a
// manual entry keeps it, and the event is published all the same: the
// person asked. When only the event fails, the error wraps ErrEvent and
// the Change is valid: the address is suppressed.
func (s *Store) Unsubscribe(ctx context.Context, address string) (Change, *Event, error) {
	if !isCanonical(address) {
		return Change{}, nil, fmt.Errorf("suppress: unsubscribe: %w: %q is not in canonical form", ErrInvalidAddress, address)
	}
	ch, err := s.add(ctx, Entry{Address: address, Reason: Unsubscribe}, 0)
	if err != nil {
		return Change{}, nil, err
	}
	if ch.Previous != nil && ch.Previous.Reason == Unsubscribe {
		return ch, nil, nil
	}
	ev := &Event{Address: ch.Entry.Address, Time: s.now().UTC(), Id: nuid.Next()}
	data, err := json.Marshal(ev)
	if err == nil {
		_, err = s.js.Publish(ctx, s.names.EventSubject(EventKind, ev.Id), data, jetstream.WithMsgID(ev.Id))
	}
	if err != nil {
		return ch, nil, fmt.Errorf("suppress: %s unsubscribed, but %w: %w", ch.Entry.Address, ErrEvent, err)
	}
	s.log.InfoContext(ctx, "unsubscribed", "address", ch.Entry.Address, "event_id", ev.Id)
	return ch, ev, nil
}
