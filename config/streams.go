package config

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// Streams is the JetStream topology of a jetmail deployment: the request,
// result and dead-letter streams and the durable consumer the workers
// share (contract §1). Workers create it at start-up with Ensure; tests
// create the very same streams through it, so that nothing is tested
// against streams production never has. Zero fields take the defaults of
// DefaultStreams.
type Streams struct {
	// Names are the subjects, streams and consumer.
	Names schema.Names
	// Replicas is the replica count of every stream and the consumer.
	// Default 1; use 3 on a cluster.
	Replicas int
	// DuplicateWindow is the request stream's Nats-Msg-Id window.
	// Default 1h.
	DuplicateWindow time.Duration
	// ResultMaxAge is how long result events are kept. Default 7 days.
	ResultMaxAge time.Duration
	// DeadMaxAge is how long dead letters are kept. Default 30 days.
	DeadMaxAge time.Duration
	// MaxRequestBytes is the request limit; the stream takes messages of up
	// to that size plus room for headers. Default
	// schema.DefaultLimits().MaxRequestBytes; negative means no limit.
	MaxRequestBytes int
	// AckWait is how long the consumer waits for an acknowledgement before
	// it redelivers. Default 60s.
	AckWait time.Duration
	// MaxDeliver is the consumer's backstop on deliveries, a few above the
	// worker's MaxAttempts (which the worker enforces itself). Default 15.
	MaxDeliver int
	// MaxAckPending bounds the messages held by workers or waiting for a
	// retry at once. Default 100000.
	MaxAckPending int
}

// DefaultStreams returns the topology of the contract's defaults.
func DefaultStreams() Streams {
	return Streams{
		Names:           schema.DefaultNames(),
		Replicas:        1,
		DuplicateWindow: time.Hour,
		ResultMaxAge:    7 * 24 * time.Hour,
		DeadMaxAge:      30 * 24 * time.Hour,
		MaxRequestBytes: schema.DefaultLimits().MaxRequestBytes,
		AckWait:         60 * time.Second,
		MaxDeliver:      15,
		MaxAckPending:   100000,
	}
}

// WithDefaults returns s with zero fields (and zero names) replaced by
// DefaultStreams'.
func (s Streams) WithDefaults() Streams {
	d := DefaultStreams()
	s.Names = s.Names.WithDefaults()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	seti := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	seti(&s.Replicas, d.Replicas)
	set(&s.DuplicateWindow, d.DuplicateWindow)
	set(&s.ResultMaxAge, d.ResultMaxAge)
	set(&s.DeadMaxAge, d.DeadMaxAge)
	seti(&s.MaxRequestBytes, d.MaxRequestBytes)
	set(&s.AckWait, d.AckWait)
	seti(&s.MaxDeliver, d.MaxDeliver)
	seti(&s.MaxAckPending, d.MaxAckPending)
	return s
}

// RequestStream is the work-queue stream of send requests.
func (s Streams) RequestStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	c := jetstream.StreamConfig{
		Name:        s.Names.RequestStream,
		Description: "jetmail send requests",
		Subjects:    s.Names.SendSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
		Duplicates:  s.DuplicateWindow,
	}
	if s.MaxRequestBytes > 0 {
		// Headers (Nats-Msg-Id…) count towards the stored size.
		c.MaxMsgSize = int32(min(s.MaxRequestBytes+4<<10, 64<<20))
	}
	return c
}

// ResultStream is the stream of result events; the latest per subject is
// a message's status, read with direct gets. It also holds the other
// events (mail.event.>), such as one-click unsubscribes.
func (s Streams) ResultStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	return jetstream.StreamConfig{
		Name:              s.Names.ResultStream,
		Description:       "jetmail result events; the latest per subject is a message's status",
		Subjects:          []string{s.Names.ResultSubjects(), s.Names.EventSubjects()},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          s.Replicas,
		MaxAge:            s.ResultMaxAge,
		Duplicates:        2 * time.Minute,
		AllowDirect:       true,
		MaxMsgsPerSubject: 32,
	}
}

// DeadStream is the stream of dead letters, kept for replay.
func (s Streams) DeadStream() jetstream.StreamConfig {
	s = s.WithDefaults()
	return jetstream.StreamConfig{
		Name:        s.Names.DeadStream,
		Description: "jetmail dead letters: failed requests with their final result, for replay",
		Subjects:    []string{s.Names.DeadSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas,
		MaxAge:      s.DeadMaxAge,
		AllowDirect: true,
	}
}

// SuppressionMarkerTTL is how long the suppression bucket keeps the
// marker that the server leaves when an entry expires (a bounce) or is
// removed, so that watchers that were away a while still learn of it.
const SuppressionMarkerTTL = time.Hour

// SuppressionBucket is the KV bucket of the suppression list (contract
// §9): one key per address or @domain (see package suppress for the key
// encoding), one revision per key, and per-key TTLs (LimitMarkerTTL) so
// that bounce entries expire on the server.
func (s Streams) SuppressionBucket() jetstream.KeyValueConfig {
	s = s.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:         s.Names.Suppressions,
		Description:    "jetmail suppression list: one key per address or @domain",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       s.Replicas,
		LimitMarkerTTL: SuppressionMarkerTTL,
	}
}

// WorkerConsumer is the durable pull consumer shared by all workers.
func (s Streams) WorkerConsumer() jetstream.ConsumerConfig {
	s = s.WithDefaults()
	return jetstream.ConsumerConfig{
		Durable:     s.Names.Consumer,
		Description: "jetmail workers",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     s.AckWait,
		MaxDeliver:  s.MaxDeliver,
		// Deferred messages (NakWithDelay) stay pending on the server, so
		// this bounds how many messages may wait for a retry; it is large
		// so that an outage of one relay does not stall the rest.
		MaxAckPending: s.MaxAckPending,
		Replicas:      s.Replicas,
	}
}

// Topology is what Ensure created: the streams a worker reads and the
// consumer it pulls from.
type Topology struct {
	// Results is the result stream, for status look-ups.
	Results jetstream.Stream
	// Consumer is the workers' durable consumer.
	Consumer jetstream.Consumer
}

// Ensure creates or updates the streams and the consumer, idempotently, so
// that a worker on an empty server is enough and any number of workers can
// start at once.
func (s Streams) Ensure(ctx context.Context, js jetstream.JetStream) (*Topology, error) {
	s = s.WithDefaults()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var t Topology
	for _, sc := range []jetstream.StreamConfig{s.RequestStream(), s.ResultStream(), s.DeadStream()} {
		st, err := js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
		if sc.Name == s.Names.ResultStream {
			t.Results = st
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, s.Names.RequestStream, s.WorkerConsumer())
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", s.Names.Consumer, s.Names.RequestStream, err)
	}
	t.Consumer = cons
	return &t, nil
}
