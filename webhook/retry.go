package webhook

import (
	"fmt"
	"time"

	"github.com/jetmail/jetmail/config"
)

// RetryPolicy is the delay between POSTs of an event that failed: an
// exponential backoff (cenkalti/backoff/v4) of the delivery count. The
// waiting happens in JetStream (NakWithDelay), not in a goroutine, so a
// retry survives a restart and holds no POST slot. How long an event is
// retried is Options.MaxAge.
type RetryPolicy struct {
	// Initial is the delay after the first failed POST.
	Initial time.Duration
	// Multiplier is the growth of the delay per failed POST (at least 1).
	Multiplier float64
	// Jitter is the randomization factor: each delay is drawn from
	// [d*(1-Jitter), d*(1+Jitter)], so that the events a dead endpoint
	// failed together are not retried together. 0 gives exact delays.
	Jitter float64
	// MaxInterval caps a single delay.
	MaxInterval time.Duration
}

// DefaultRetry is the policy used when Options.Retry is the zero value:
// 1s, ×2, up to 10m, with 20% jitter. An endpoint that is back within a
// minute gets its events within seconds; over the 24 hours of
// Options.MaxAge an event is tried about 150 times.
var DefaultRetry = RetryPolicy{
	Initial:     time.Second,
	Multiplier:  2,
	Jitter:      0.2,
	MaxInterval: 10 * time.Minute,
}

func (p RetryPolicy) validate() error {
	switch {
	case p.Initial <= 0:
		return fmt.Errorf("Retry.Initial must be positive, got %s", p.Initial)
	case p.Multiplier < 1:
		return fmt.Errorf("Retry.Multiplier must be at least 1, got %g", p.Multiplier)
	case p.Jitter < 0 || p.Jitter >= 1:
		return fmt.Errorf("Retry.Jitter must be in [0, 1), got %g", p.Jitter)
	case p.MaxInterval < p.Initial:
		return fmt.Errorf("Retry.MaxInterval %s is below Retry.Initial %s", p.MaxInterval, p.Initial)
	}
	return nil
}

// Delay returns how long to wait after the n-th failed POST (n is
// JetStream's delivery count, from 1) before the next (config.BackoffDelay
// of the policy; Options.MaxAge bounds the retries, from the event's
// stream timestamp).
func (p RetryPolicy) Delay(n int) time.Duration {
	return config.BackoffDelay(p.Initial, p.Multiplier, p.Jitter, p.MaxInterval, n)
}
