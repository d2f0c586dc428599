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
// is created. One refresh reads for at most a quarter of a second (some
// 25,000 events on two cores), so a first look fills the chart over a few
// refreshes, and the tally keeps up with about 15,000 events a second
// while the overview is polled. When the window holds more than
// tallyFirstMax events at the first look, the tally starts that far back
// and the chart marks the older bars as not read, rather than take
// minutes to fill them.

const (
	tallyBucket = 30 * time.Second
	tallyWindow = 15 * time.Minute
	tallyBars   = int(tallyWindow / tallyBucket)
	// tallyBudget bounds the reading of one refresh.
	tallyBudget = 250 * time.Millisecond
	// tallyBatch is the messages of one direct get.
	tallyBatch = 1000
	// tallyFirstMax bounds the events the first refresh goes back.
	tallyFirstMax = 100_000
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
	from    time.Time                   // when the events read begin, if after the window's start
	// firstMax is tallyFirstMax; tests lower it.
	firstMax uint64
}

func newTally(js jetstream.JetStream, names schema.Names) *tally {
	return &tally{nc: js.Conn(), js: js, names: names, buckets: map[int64]*[countStates]int{}, firstMax: tallyFirstMax}
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
	if t.next == 0 {
		if err := t.start(ctx, now); err != nil {
			return err
		}
	}
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

// start finds where the first refresh begins: the first event of the
// window, or tallyFirstMax events before the last one when the window
// holds more.
func (t *tally) start(ctx context.Context, now time.Time) error {
	t.from = time.Time{}
	first, _, err := t.peek(ctx, map[string]any{"start_time": now.Add(-tallyWindow).UTC()})
	if err != nil || first == 0 {
		return err // nothing in the window: t.next stays 0
	}
	s, err := t.js.Stream(ctx, t.names.ResultStream)
	if err != nil {
		return err
	}
	last := s.CachedInfo().State.LastSeq
	t.next = first
	if last >= first+t.firstMax {
		seq, ts, err := t.peek(ctx, map[string]any{"seq": last - t.firstMax + 1})
		if err != nil {
			return err
		}
		if seq != 0 {
			t.next, t.from = seq, ts
		}
	}
	return nil
}

// peek returns the sequence and time of the first message of the result
// stream that a direct get req selects; 0 when there is none.
func (t *tally) peek(ctx context.Context, req map[string]any) (uint64, time.Time, error) {
	body, _ := json.Marshal(req)
	m, err := t.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+t.names.ResultStream, body)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("reading the result stream: %w", err)
	}
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		return 0, time.Time{}, nil
	default:
		return 0, time.Time{}, fmt.Errorf("reading the result stream: status %s %s", status, m.Header.Get("Description"))
	}
	seq, _ := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	ts, err := time.Parse(time.RFC3339Nano, m.Header.Get("Nats-Time-Stamp"))
	if seq == 0 || err != nil {
		return 0, time.Time{}, fmt.Errorf("reading the result stream: a direct get without sequence or time stamp")
	}
	return seq, ts, nil
}

// readBatch reads one batch of result events, and returns how many more
// the stream holds after it.
func (t *tally) readBatch(ctx context.Context, now time.Time) (pending uint64, err error) {
	if t.next == 0 {
		// Nothing was in the window at the start: from its start again.
		seq, _, err := t.peek(ctx, map[string]any{"start_time": now.Add(-tallyWindow).UTC()})
		if err != nil || seq == 0 {
			return 0, err
		}
		t.next = seq
	}
	req := map[string]any{"batch": tallyBatch, "next_by_subj": t.names.ResultSubjects(), "seq": t.next}
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
		t.next, t.from = 0, time.Time{}
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
// of now, oldest first; how many of the first were not read (they are
// before the events the tally began with); and whether the tally is still
// catching up.
func (t *tally) series(now time.Time) (counts [][countStates]int, unread int, behind bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	counts = make([][countStates]int, tallyBars)
	last := bucketOf(now)
	step := int64(tallyBucket / time.Second)
	for i := range counts {
		start := last - int64(tallyBars-1-i)*step
		if !t.from.IsZero() && start <= bucketOf(t.from) {
			unread = i + 1 // the bucket of from is only partly read
		}
		if b := t.buckets[start]; b != nil {
			counts[i] = *b
		}
	}
	return counts, unread, t.behind
}
