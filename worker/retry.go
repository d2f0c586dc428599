package worker

import (
	"fmt"
	"time"

	"github.com/jetmail/jetmail/config"
)

// RetryPolicy decides when a transiently failed message is tried again and
// when it is given up. The delays come from an exponential backoff
// (cenkalti/backoff/v4); the waiting happens in JetStream (NakWithDelay), not
// in the worker, so a deferred message occupies no goroutine and survives a
// restart. The attempt number is JetStream's delivery count, so attempts are
// counted across all workers.
//
// The zero value is not useful; see DefaultRetryPolicy.
type RetryPolicy struct {
	// Initial is the delay before the second attempt. Default 30s.
	Initial time.Duration
	// Multiplier is the growth of the delay per attempt. Default 2.
	Multiplier float64
	// Jitter is the randomization factor: each delay is drawn from
	// [d*(1-Jitter), d*(1+Jitter)]. DefaultRetryPolicy has 0.2; zero gives
	// exact delays (it is not defaulted).
	Jitter float64
	// MaxInterval caps a single delay. Default 30m.
	MaxInterval time.Duration
	// MaxAttempts is the number of attempts after which a transiently
	// failing message fails with status 500 (401 for authentication).
	// Default 12.
	MaxAttempts int
	// MaxAge is the age, from the first publish, after which a transiently
	// failing message fails instead of being deferred. Default 48h.
	MaxAge time.Duration
}

// DefaultRetryPolicy returns the policy of the contract's defaults: 30s,
// ×2 with ±20 % jitter, up to 30m, 12 attempts, 48h.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		Initial:     30 * time.Second,
		Multiplier:  2,
		Jitter:      0.2,
		MaxInterval: 30 * time.Minute,
		MaxAttempts: 12,
		MaxAge:      48 * time.Hour,
	}
}

// withDefaults returns p with zero fields set to DefaultRetryPolicy's
// (Jitter excepted: zero means exact delays). A MaxInterval below a
// configured Initial is raised to it.
func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy()
	if p.Initial == 0 {
		p.Initial = d.Initial
	}
	if p.Multiplier == 0 {
		p.Multiplier = d.Multiplier
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = max(d.MaxInterval, p.Initial)
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.MaxAge == 0 {
		p.MaxAge = d.MaxAge
	}
	return p
}

// validate returns a *FieldError for each bad field of p.
func (p RetryPolicy) validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: "Retry." + field, Err: fmt.Errorf(format, args...)})
	}
	if p.Initial <= 0 {
		bad("Initial", "must be positive, got %s", p.Initial)
	}
	if p.Multiplier < 1 {
		bad("Multiplier", "must be at least 1, got %g", p.Multiplier)
	}
	if p.Jitter < 0 || p.Jitter >= 1 {
		bad("Jitter", "must be in [0, 1), got %g", p.Jitter)
	}
	if p.MaxInterval < p.Initial {
		bad("MaxInterval", "%s is below the initial interval %s", p.MaxInterval, p.Initial)
	}
	if p.MaxAttempts < 1 {
		bad("MaxAttempts", "must be at least 1, got %d", p.MaxAttempts)
	}
	if p.MaxAge <= 0 {
		bad("MaxAge", "must be positive, got %s", p.MaxAge)
	}
	return errs
}

// Delay returns how long to wait after attempt n (1-based) before the next
// one (config.BackoffDelay of the policy).
func (p RetryPolicy) Delay(n int) time.Duration {
	return config.BackoffDelay(p.Initial, p.Multiplier, p.Jitter, p.MaxInterval, n)
}

// Next decides what follows a transient failure of attempt n for a message
// first published at firstSeen: the time of the next attempt, or ok=false
// when attempts or age have run out.
func (p RetryPolicy) Next(n int, firstSeen, now time.Time) (next time.Time, ok bool) {
	if n >= p.MaxAttempts {
		return time.Time{}, false
	}
	next = now.Add(p.Delay(n))
	if next.Sub(firstSeen) > p.MaxAge {
		return time.Time{}, false
	}
	return next, true
}
