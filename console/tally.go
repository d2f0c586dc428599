package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// The overview's chart counts the result events of the last 15 minutes by
// state, per 30 seconds. They come from the result stream itself, not from
// the search index (which keeps only the latest event of a message, and
// may be off) nor from a worker's metrics (which count one process). The
// tally reads the stream incrementally with batched direct gets from where
// it stopped (the first time from 15 minutes ago), only when someone looks
// at the overview, so a console nobody watches costs nothing; no consumer
// is created. One refresh reads for at most a quarter of a second, so a
// first look at a busy deployment fills the chart over a few refreshes.

const (
	tallyBucket = 30 * time.Second
	tallyWindow = 15 * time.Minute
	tallyBars   = int(tallyWindow / tallyBucket)
	// tallyBudget bounds the reading of one refresh.
	tallyBudget = 250 * time.Millisecond
	// tallyBatch is the messages of one direct get.
	tallyBatch = 1000
)

// The states the chart shows, in stacking order.
const (
	countSent = iota
	countDeferred
	countFailed
	countStates
)

// tally counts result events per bucket. Its methods are safe for
// concurrent use.
type tally struct {
	mu      sync.Mutex
	nc      *nats.Conn
	js      jetstream.JetStream
	names   schema.Names
	next    uint64                      // the next stream sequence to read; 0: from tallyWindow ago
	buckets map[int64]*[countStates]int // by bucket start, Unix seconds
	behind  bool                        // the last refresh ran out of budget
}

func newTally(js jetstream.JetStream, names schema.Names) *tally {
	return &tally{nc: js.Conn(), js: js, names: names, buckets: map[int64]*[countStates]int{}}
}

// bucketOf is the start of the bucket of t, in Unix seconds.
func bucketOf(t time.Time) int64 {
	s := int64(tallyBucket / time.Second)
	return t.Unix() / s * s
}

// refresh reads the events stored since the last refresh.
func (t *tally) refresh(ctx context.Context, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	deadline := time.Now().Add(tallyBudget)
	t.behind = false
	for {
		pending, err := t.readBatch(ctx, now)
		if err != nil {
			return err
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.behind = true
			break
		}
	}
	oldest := bucketOf(now.Add(-tallyWindow))
	for b := range t.buckets {
		if b < oldest {
			delete(t.buckets, b)
		}
	}
	return nil
}

// readBatch reads one batch of result events, and returns how many more
// the stream holds after it.
func (t *tally) readBatch(ctx context.Context, now time.Time) (pending uint64, err error) {
	req := map[string]any{"batch": tallyBatch, "next_by_subj": t.names.ResultSubjects()}
	if t.next == 0 {
		req["start_time"] = now.Add(-tallyWindow).UTC()
	} else {
		req["seq"] = t.next
	}
	body, _ := json.Marshal(req)
	inbox := nats.NewInbox()
	sub, err := t.nc.SubscribeSync(inbox)
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	if err := t.nc.PublishRequest("$JS.API.DIRECT.GET."+t.names.ResultStream, inbox, body); err != nil {
		return 0, err
	}
	for {
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := sub.NextMsgWithContext(mctx)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("reading the result stream: %w", err)
		}
		switch status := m.Header.Get("Status"); status {
		case "":
		case "204": // the end of the batch
			n, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
			return n, nil
		case "404": // nothing (more) to read
			return 0, t.checkReset(ctx)
		case "503":
			return 0, fmt.Errorf("reading the result stream: no JetStream responder (is stream %s there?)", t.names.ResultStream)
		default:
			return 0, fmt.Errorf("reading the result stream: status %s %s", status, m.Header.Get("Description"))
		}
		seq, _ := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		ts, err := time.Parse(time.RFC3339Nano, m.Header.Get("Nats-Time-Stamp"))
		if seq == 0 || err != nil {
			return 0, fmt.Errorf("reading the result stream: a direct get without sequence or time stamp")
		}
		t.next = seq + 1
		if i, ok := countOf(stateOf(m.Data)); ok {
			b := t.buckets[bucketOf(ts)]
			if b == nil {
				b = new([countStates]int)
				t.buckets[bucketOf(ts)] = b
			}
			b[i]++
		}
	}
}

// checkReset starts over when the result stream has been recreated (its
// last sequence is below the one to read next).
func (t *tally) checkReset(ctx context.Context) error {
	if t.next <= 1 {
		return nil
	}
	s, err := t.js.Stream(ctx, t.names.ResultStream)
	if err != nil {
		return err
	}
	if last := s.CachedInfo().State.LastSeq; last+1 < t.next {
		t.next = 0
		clear(t.buckets)
	}
	return nil
}

// stateOf reads the State of a result event: from where json.Marshal of
// schema.Result puts it, or else by decoding.
func stateOf(data []byte) schema.State {
	const key = `"State":"`
	if i := bytes.Index(data, []byte(key)); i >= 0 {
		rest := data[i+len(key):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			return schema.State(rest[:j])
		}
	}
	var r struct{ State schema.State }
	_ = json.Unmarshal(data, &r)
	return r.State
}

// countOf is the chart's index of a state; the others are not charted.
func countOf(s schema.State) (int, bool) {
	switch s {
	case schema.StateSent:
		return countSent, true
	case schema.StateDeferred:
		return countDeferred, true
	case schema.StateFailed:
		return countFailed, true
	}
	return 0, false
}

// series returns the counts of the tallyBars buckets that end with the one
// of now, oldest first, and whether the tally is still catching up.
func (t *tally) series(now time.Time) ([][countStates]int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([][countStates]int, tallyBars)
	last := bucketOf(now)
	step := int64(tallyBucket / time.Second)
	for i := range out {
		if b := t.buckets[last-int64(tallyBars-1-i)*step]; b != nil {
			out[i] = *b
		}
	}
	return out, t.behind
}
