package webhook

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// The outcome label values of jetmail_webhook_deliveries_total.
const (
	outcomeOK      = "ok"      // a 2xx answer
	outcomeRetry   = "retry"   // a failed POST, tried again later
	outcomeDropped = "dropped" // given up: older than MaxAge
)

// metrics are the Prometheus collectors of a Dispatcher (CONTRACT §6).
// They are safe for concurrent use.
type metrics struct {
	// deliveries counts POST outcomes by webhook and outcome (ok, retry,
	// dropped). An event filtered out by States counts nothing.
	deliveries *prometheus.CounterVec
	// pending is the number of events not yet delivered to a webhook:
	// waiting in the stream for its consumer, being POSTed, or waiting for
	// a retry; refreshed every Options.PendingInterval.
	pending *prometheus.GaugeVec
}

// newMetrics creates the collectors with every label value of hooks, so
// that dashboards see zeros rather than nothing, and registers them on reg
// (nil: not registered).
func newMetrics(reg prometheus.Registerer, hooks []Config) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "webhook_deliveries_total",
			Help: "Webhook POSTs of events, by webhook and outcome (ok: a 2xx answer; retry: failed, tried again later; dropped: given up after the maximum age).",
		}, []string{"webhook", "outcome"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "webhook_pending",
			Help: "Events not yet delivered to a webhook (waiting, being POSTed, or waiting for a retry), from its consumer.",
		}, []string{"webhook"}),
	}
	for _, h := range hooks {
		for _, o := range []string{outcomeOK, outcomeRetry, outcomeDropped} {
			m.deliveries.WithLabelValues(h.Name, o)
		}
		m.pending.WithLabelValues(h.Name)
	}
	if reg != nil {
		if err := reg.Register(m.deliveries); err != nil {
			return nil, fmt.Errorf("webhook metrics: %w", err)
		}
		if err := reg.Register(m.pending); err != nil {
			reg.Unregister(m.deliveries)
			return nil, fmt.Errorf("webhook metrics: %w", err)
		}
	}
	return m, nil
}
