package producer_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

func TestWithIDAndWithLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, schema.DefaultNames(), producer.WithLimits(schema.Limits{MaxRecipients: 2}))
	ctx := context.Background()

	// WithID names a request that has no Id; the same Id twice is stored once.
	payload := []byte(`{"To": "a@example.com", "Body": "b"}`)
	id, ack, err := b.p.PublishJSON(ctx, payload, producer.WithID("line-7"))
	if err != nil || id != "line-7" || ack.Duplicate {
		t.Fatalf("PublishJSON with WithID = %q, %+v, %v", id, ack, err)
	}
	if _, ack, err = b.p.PublishJSON(ctx, payload, producer.WithID("line-7")); err != nil || !ack.Duplicate {
		t.Fatalf("second publish with the same Id: %+v, %v", ack, err)
	}
	// The request's own Id wins over WithID.
	if id, _, err := b.p.Publish(ctx, &schema.Request{Id: "own", To: schema.AddressList{"a@example.com"}}, producer.WithID("other")); err != nil || id != "own" {
		t.Fatalf("Publish = %q, %v", id, err)
	}
	if _, _, err := b.p.PublishJSON(ctx, payload, producer.WithID("not valid!")); !errors.Is(err, producer.ErrInvalidOption) {
		t.Fatalf("invalid WithID: %v", err)
	}
	// WithLimits: three recipients are over the producer's limit of two.
	_, _, err = b.p.Publish(ctx, &schema.Request{To: schema.AddressList{"a@example.com", "b@example.com", "c@example.com"}})
	var ve *schema.ValidationError
	if !errors.As(err, &ve) || !ve.TooLarge() || !strings.Contains(err.Error(), "limit of 2") {
		t.Fatalf("over the recipient limit: %v", err)
	}
}
