package worker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Cancellation marks live in the bucket config.Streams.CancelBucket: key
// "id.<Id>" for one message, "batch.<BatchId>" for a batch (producer.Cancel
// and CancelBatch write them). Every delivery checks them twice: when the
// facts are gathered and once more right before the SMTP transaction
// begins. So the check must cost next to nothing: cancelSet keeps every
// mark in memory, fed by a watch on the bucket, and a check is two map
// look-ups under a read lock.

// cancelSet is the in-memory copy of the cancellation marks. It is safe
// for concurrent use.
type cancelSet struct {
	mu      sync.RWMutex
	ids     map[string]struct{}
	batches map[string]struct{}
	ready   atomic.Bool // the bucket's current marks have been loaded
	loaded  chan struct{}
	once    sync.Once
}

func newCancelSet() *cancelSet {
	return &cancelSet{ids: map[string]struct{}{}, batches: map[string]struct{}{}, loaded: make(chan struct{})}
}

// cancelled reports whether the message id, or its batch, is cancelled.
func (c *cancelSet) cancelled(id, batch string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, ok := c.ids[id]; ok {
		return true
	}
	_, ok := c.batches[batch]
	return ok && batch != ""
}

// apply records one watch update.
func (c *cancelSet) apply(e jetstream.KeyValueEntry) {
	kind, name, ok := strings.Cut(e.Key(), ".")
	if !ok {
		return
	}
	set := c.ids
	if kind == "batch" {
		set = c.batches
	} else if kind != "id" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.Operation() == jetstream.KeyValuePut {
		set[name] = struct{}{}
	} else {
		delete(set, name)
	}
}

// markLoaded says the initial marks are in.
func (c *cancelSet) markLoaded() {
	c.once.Do(func() {
		c.ready.Store(true)
		close(c.loaded)
	})
}

// watch keeps c up to date with kv until ctx ends, watching again after a
// lost connection (a watch replays the current marks, so nothing set
// meanwhile is missed).
func (c *cancelSet) watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) {
	for ctx.Err() == nil {
		w, err := kv.WatchAll(ctx, jetstream.IncludeHistory())
		if err != nil {
			log.WarnContext(ctx, "cannot watch the cancellation marks; retrying", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				c.markLoaded() // the marks present when watching began
				continue
			}
			c.apply(e)
		}
		_ = w.Stop()
	}
}
