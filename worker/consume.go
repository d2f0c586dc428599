package worker

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// pull feeds jobs from the consumer until ctx ends, then returns what the
// client had buffered to the stream (the "shutdown before work" row of the
// decision table), so that another worker takes it at once.
func (w *Worker) pull(ctx context.Context, cons jetstream.Consumer, jobs chan<- jetstream.Msg) {
	for ctx.Err() == nil {
		it, err := cons.Messages(jetstream.PullMaxMessages(w.cfg.Prefetch), jetstream.PullHeartbeat(5*time.Second))
		if err != nil {
			w.log.ErrorContext(ctx, "cannot pull; retrying", "error", err)
			w.ready.Store(false)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
				if top, err := w.cfg.streams().Ensure(ctx, w.js); err == nil {
					cons = top.Consumer
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
					w.log.WarnContext(ctx, "pull interrupted", "error", err)
					continue
				}
				w.log.ErrorContext(ctx, "pull failed", "error", err)
				it.Stop()
				break
			}
			if ctx.Err() != nil {
				w.returnToStream(ctx, m) // drained from the buffer during shutdown
				continue
			}
			select {
			case jobs <- m:
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
func (w *Worker) watchPending(ctx context.Context, cons jetstream.Consumer) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := cons.Info(ictx)
		cancel()
		if err == nil {
			w.metrics.QueuePending.Set(float64(info.NumPending))
			w.metrics.AckPending.Set(float64(info.NumAckPending))
			w.ready.Store(true)
		} else if ctx.Err() == nil {
			w.ready.Store(false)
		}
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
