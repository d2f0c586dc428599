package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/semaphore"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// How the lanes share a worker (contract §7). Each lane has its own
// durable consumer and a puller goroutine that keeps a small buffer of its
// messages (Prefetch split between the lanes) and offers the next one in a
// slot of its own. The dispatcher owns the Concurrency delivery slots, not
// the lanes: whenever a slot is free it takes the best message on offer,
// so one busy lane can use the whole worker. Urgent goes before normal
// before bulk; a lower lane that has a message waiting earns credit on
// each delivery it is passed over for, and when its credit reaches one
// delivery it goes first, so it gets at least LaneShare of the deliveries.
// Retries stay in their lane, as a deferred message is redelivered by its
// own consumer.

// inflightFactor is how many times its payload's size a delivery holds in
// memory at most, counted against Config.MaxInflightBytes.
const inflightFactor = 4

// laneFeed is one lane's offer to the dispatcher.
type laneFeed struct {
	lane   schema.Lane
	offer  chan jetstream.Msg // the puller's next message
	held   jetstream.Msg      // taken from offer, not yet dispatched
	credit int                // in thousandths of a delivery
}

// laneScheduler picks the lane of the next delivery. It is used by the
// dispatcher goroutine only.
type laneScheduler struct {
	feeds []*laneFeed // urgent first
	gain  int         // credit a waiting lane earns per delivery, in thousandths
}

// newLaneScheduler makes a scheduler where a waiting lane gets at least
// share of the deliveries.
func newLaneScheduler(feeds []*laneFeed, share float64) *laneScheduler {
	return &laneScheduler{feeds: feeds, gain: int(share*1000 + 0.5)}
}

// pick chooses among the feeds holding a message. On every delivery each
// waiting lane below the most urgent waiting one earns share of a delivery
// (up to one); a lane whose credit reaches a whole delivery goes first and
// pays it, else the most urgent waiting lane goes. So a waiting lane gets
// at least share of the deliveries, and the rest go by urgency. A lane
// that has nothing waiting loses its credit. pick returns nil when no feed
// holds a message.
func (s *laneScheduler) pick() *laneFeed {
	var top, owed *laneFeed
	for _, f := range s.feeds {
		switch {
		case f.held == nil:
			f.credit = 0
		case top == nil:
			top = f
		default:
			f.credit = min(f.credit+s.gain, 1000)
			if f.credit >= 1000 && owed == nil {
				owed = f
			}
		}
	}
	if owed != nil {
		owed.credit -= 1000
		return owed
	}
	return top
}

// consume runs the lanes' pullers and the dispatcher until ctx ends, each
// delivery in a goroutine of handlers (at most Concurrency at once). Then
// it returns what it had taken but not dispatched to the stream.
func (w *Worker) consume(ctx, hctx context.Context, top *config.Topology, handlers *sync.WaitGroup) {
	perLane := max(1, (w.cfg.Prefetch+len(config.Lanes)-1)/len(config.Lanes))
	var pullers sync.WaitGroup
	var feeds []*laneFeed
	for _, l := range config.Lanes {
		f := &laneFeed{lane: l, offer: make(chan jetstream.Msg)}
		feeds = append(feeds, f)
		pullers.Go(func() { w.pullLane(ctx, l, top.Consumers[l], perLane, f.offer) })
	}
	sched := newLaneScheduler(feeds, w.cfg.LaneShare)
	slots := make(chan struct{}, w.cfg.Concurrency)
	memory := semaphore.NewWeighted(int64(w.cfg.MaxInflightBytes))
	defer func() {
		for _, f := range feeds {
			if f.held != nil {
				w.returnToStream(ctx, f.held)
			}
		}
		pullers.Wait()
	}()
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		f := w.nextOffer(ctx, sched)
		if f == nil {
			<-slots
			return
		}
		m := f.held
		f.held = nil
		// Deliveries in flight hold their request several times over (the
		// payload, decoded attachments, the rendered message): large ones
		// wait for room so that many of them do not exhaust the memory.
		cost := min(int64(len(m.Data()))*inflightFactor, int64(w.cfg.MaxInflightBytes))
		if err := memory.Acquire(ctx, cost); err != nil {
			<-slots
			w.returnToStream(ctx, m)
			return
		}
		handlers.Go(func() {
			defer func() { memory.Release(cost); <-slots }()
			w.handle(hctx, m)
		})
	}
}

// nextOffer takes what every lane offers now and picks one; when none
// offers anything it waits for the first offer. It returns nil when ctx
// ends.
func (w *Worker) nextOffer(ctx context.Context, s *laneScheduler) *laneFeed {
	for {
		for _, f := range s.feeds {
			if f.held == nil {
				select {
				case m := <-f.offer:
					f.held = m
				default:
				}
			}
		}
		if f := s.pick(); f != nil {
			return f
		}
		select {
		case m := <-s.feeds[0].offer:
			s.feeds[0].held = m
		case m := <-s.feeds[1].offer:
			s.feeds[1].held = m
		case m := <-s.feeds[2].offer:
			s.feeds[2].held = m
		case <-ctx.Done():
			return nil
		}
	}
}

// pullLane offers the messages of one lane's consumer until ctx ends, then
// drains the client buffer back to the stream (the "shutdown before work"
// row of the decision table), so that another worker takes them at once.
func (w *Worker) pullLane(ctx context.Context, lane schema.Lane, cons jetstream.Consumer, buffer int, offer chan<- jetstream.Msg) {
	for ctx.Err() == nil {
		// Pull requests are now and then lost under load (the client then
		// believes messages are on their way that the server will never
		// send, nats-io/nats.go#1622); only the missing heartbeats
		// reveal it, after twice this interval, so keep it short: the
		// lane stalls for 2 s at most, not 10.
		it, err := cons.Messages(jetstream.PullMaxMessages(buffer), jetstream.PullHeartbeat(time.Second))
		if err != nil {
			w.log.ErrorContext(ctx, "cannot pull; retrying", "lane", lane, "error", err)
			w.ready.Store(false)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
				if top, err := w.cfg.streams().Ensure(ctx, w.js); err == nil {
					cons = top.Consumers[lane]
					w.ready.Store(true)
				}
			}
			continue
		}
		stop := context.AfterFunc(ctx, it.Drain)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					break
				}
				if errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrConnectionClosed) {
					w.log.WarnContext(ctx, "pull interrupted", "lane", lane, "error", err)
					continue
				}
				w.log.ErrorContext(ctx, "pull failed", "lane", lane, "error", err)
				it.Stop()
				break
			}
			if ctx.Err() != nil {
				w.returnToStream(ctx, m) // drained from the buffer during shutdown
				continue
			}
			select {
			case offer <- m:
			case <-ctx.Done():
				w.returnToStream(ctx, m)
			}
		}
		stop()
	}
}

// returnToStream settles a message the worker took but will not work on.
func (w *Worker) returnToStream(ctx context.Context, m jetstream.Msg) {
	j := &job{msg: m, stopProgress: func() {}}
	w.settle(ctx, j, decide(facts{shutdown: true}, w.cfg.Retry))
}

// watchPending refreshes the queue gauges and readiness.
func (w *Worker) watchPending(ctx context.Context, top *config.Topology) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		ok := true
		ackPending := 0
		for _, l := range config.Lanes {
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			info, err := top.Consumers[l].Info(ictx)
			cancel()
			if err != nil {
				// Not ready at once: with NATS frozen or cut off each
				// look-up takes its whole timeout.
				ok = false
				if ctx.Err() == nil {
					w.ready.Store(false)
				}
				continue
			}
			w.metrics.QueuePending.WithLabelValues(string(l)).Set(float64(info.NumPending))
			ackPending += info.NumAckPending
		}
		if ok {
			w.metrics.AckPending.Set(float64(ackPending))
		}
		if n, err := w.countScheduled(ctx); err == nil {
			w.metrics.Scheduled.Set(float64(n))
		}
		if ok {
			w.ready.Store(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// mirrorReady keeps jetmail_ready equal to what /readyz answers, once a
// second until ctx ends. (A round of watchPending's look-ups takes 20 s
// when NATS does not answer, too long to wait for.)
func (w *Worker) mirrorReady(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if w.Ready() {
			w.metrics.Ready.Set(1)
		} else {
			w.metrics.Ready.Set(0)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// countScheduled counts the requests waiting for their SendAt.
func (w *Worker) countScheduled(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return config.CountScheduled(ctx, w.js, w.cfg.Names)
}

// keepInProgress sends progress acks every AckWait/3 until the returned
// function is called, so that a message whose SMTP session or settling is
// slow is not redelivered to another worker. The function may be called
// more than once; once it has returned, no progress ack is sent.
func (w *Worker) keepInProgress(msg jetstream.Msg) (stop func()) {
	every := w.cfg.AckWait / 3
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(every)
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}
