package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ensureStreams creates or updates the request, result and dead-letter
// streams and the durable consumer, idempotently, so that `jetmail worker`
// on an empty server is enough and any number of workers can start at once.
func (w *Worker) ensureStreams(ctx context.Context) (jetstream.Consumer, error) {
	n, c := w.cfg.Names, w.cfg
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	streams := []jetstream.StreamConfig{{
		Name:        n.RequestStream,
		Description: "jetmail send requests",
		Subjects:    n.SendSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		Duplicates:  c.DuplicateWindow,
		// Headers (Nats-Msg-Id…) count towards the stored size.
		MaxMsgSize: int32(min(c.Limits.MaxRequestBytes+4<<10, 64<<20)),
	}, {
		Name:              n.ResultStream,
		Description:       "jetmail result events; the latest per subject is a message's status",
		Subjects:          []string{n.ResultSubjects()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          c.Replicas,
		MaxAge:            c.ResultMaxAge,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		MaxMsgsPerSubject: 32,
	}, {
		Name:        n.DeadStream,
		Description: "jetmail dead letters: failed requests with their final result, for replay",
		Subjects:    []string{n.DeadSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      c.DeadMaxAge,
		AllowDirect: true,
	}}
	for _, sc := range streams {
		s, err := w.js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
		if sc.Name == n.ResultStream {
			w.results = s
		}
	}
	cons, err := w.js.CreateOrUpdateConsumer(ctx, n.RequestStream, jetstream.ConsumerConfig{
		Durable:     n.Consumer,
		Description: "jetmail workers",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     c.AckWait,
		// MaxAttempts is enforced in code; this is a backstop a few
		// deliveries above it, so the server never stops redelivering
		// before a final event is published.
		MaxDeliver: c.Retry.MaxAttempts + 3,
		// Deferred messages (NakWithDelay) stay pending on the server,
		// so this bounds how many messages may wait for a retry; it is
		// large so that an outage of one relay does not stall the rest.
		MaxAckPending: c.MaxAckPending,
		Replicas:      c.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", n.Consumer, n.RequestStream, err)
	}
	return cons, nil
}
