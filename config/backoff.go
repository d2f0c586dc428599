package config

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// BackoffDelay is the delay after the n-th failure (n from 1) of an
// exponential backoff (cenkalti/backoff/v4) that starts at initial, grows
// by multiplier, is drawn within ±jitter of that and is capped at
// maxInterval. It builds a fresh backoff on each call, because
// ExponentialBackOff is stateful and not safe to share, and without a
// MaxElapsedTime: the callers bound retries by the age of the message in
// the stream. The worker's retries of a message and the webhooks'
// retries of an event both wait this long (in JetStream, NakWithDelay).
func BackoffDelay(initial time.Duration, multiplier, jitter float64, maxInterval time.Duration, n int) time.Duration {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMultiplier(multiplier),
		backoff.WithRandomizationFactor(jitter),
		backoff.WithMaxInterval(maxInterval),
		backoff.WithMaxElapsedTime(0),
	)
	d := initial
	// Past a few hundred failures the delay is maxInterval anyway; the
	// bound only guards against a count gone wild.
	for range min(max(n, 1), 10000) {
		d = b.NextBackOff()
	}
	return d
}
