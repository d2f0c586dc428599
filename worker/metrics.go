package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetmail/jetmail/schema"
)

// Metrics are the Prometheus collectors of a worker (contract §6), all in
// the jetmail_ namespace. They are safe for concurrent use.
type Metrics struct {
	// Requests counts requests taken off the stream by outcome: accepted,
	// invalid, duplicate.
	Requests *prometheus.CounterVec
	// Results counts result events published, by state and status.
	Results *prometheus.CounterVec
	// SMTPAttempts counts SMTP transactions by connection and outcome: ok,
	// transient, permanent.
	SMTPAttempts *prometheus.CounterVec
	// SMTPSend observes the duration of one delivery attempt through the
	// transport (an SMTP transaction, or the file write of the outbox), by
	// connection.
	SMTPSend *prometheus.HistogramVec
	// DeliveryLatency observes the time from the first publish of a request
	// to its final result.
	DeliveryLatency prometheus.Histogram
	// Inflight is the number of messages the worker holds now.
	Inflight prometheus.Gauge
	// QueuePending is the number of requests waiting in the stream for a
	// worker, by lane, refreshed periodically.
	QueuePending *prometheus.GaugeVec
	// Scheduled is the number of requests waiting for their SendAt,
	// refreshed periodically.
	Scheduled prometheus.Gauge
	// Cancelled counts messages a worker ended as cancelled (410).
	Cancelled prometheus.Counter
	// Uncertain counts attempts that ended after the final "." of DATA
	// without a reply, by connection.
	Uncertain *prometheus.CounterVec
	// AckPending is the number of requests taken by workers and not yet
	// settled, including those waiting for a retry (deferred), refreshed
	// periodically. It must stay below the consumer's MaxAckPending.
	AckPending prometheus.Gauge
	// Ready is 1 while the worker is connected to NATS and its streams are
	// reachable (what /readyz answers), else 0.
	Ready prometheus.Gauge
	// SMTPConnections is the number of open SMTP connections, by
	// connection.
	SMTPConnections *prometheus.GaugeVec
	// DeadLetters counts requests copied to the dead-letter stream.
	DeadLetters prometheus.Counter
	// Suppressed counts recipients skipped because they are on the
	// suppression list, by the entry's reason: bounce, unsubscribe, manual.
	Suppressed *prometheus.CounterVec
	// Bounces counts recipients added to the suppression list because the
	// server refused them as unknown (reason bounce).
	Bounces prometheus.Counter
	// DKIMSigned counts messages signed with DKIM, by signing domain (d=):
	// one per message rendered for a delivery attempt, however many keys
	// of the domain signed it.
	DKIMSigned *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg (a nil reg
// registers nothing, for tests that do not look).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "requests_total",
			Help: "Requests taken off the stream, by outcome (accepted, invalid, duplicate, scheduled).",
		}, []string{"outcome"}),
		Results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "results_total",
			Help: "Result events published, by state and status.",
		}, []string{"state", "status"}),
		SMTPAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "smtp_attempts_total",
			Help: "SMTP delivery attempts, by connection and outcome (ok, transient, permanent).",
		}, []string{"connection", "outcome"}),
		SMTPSend: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "jetmail", Name: "smtp_send_seconds",
			Help:    "Duration of one delivery attempt through the transport (an SMTP transaction, or the outbox write), by connection.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"connection"}),
		DeliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "jetmail", Name: "delivery_latency_seconds",
			Help:    "Time from the first publish of a request to its final result.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400},
		}),
		Inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "inflight",
			Help: "Messages this worker holds now.",
		}),
		QueuePending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "queue_pending",
			Help: "Requests waiting in the stream for a worker, by lane.",
		}, []string{"lane"}),
		Scheduled: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "scheduled",
			Help: "Requests waiting for their SendAt.",
		}),
		Uncertain: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "uncertain_total",
			Help: "Attempts that ended after the final dot of DATA without a reply (the relay may have the message), by connection.",
		}, []string{"connection"}),
		Cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "cancelled_total",
			Help: "Messages a worker (or its HTTP API and console) ended as cancelled (410).",
		}),
		AckPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "ack_pending",
			Help: "Requests held by workers or waiting for a retry (deferred), from the consumer.",
		}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "ready",
			Help: "1 while connected to NATS with the streams reachable, else 0.",
		}),
		SMTPConnections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "jetmail", Name: "smtp_connections",
			Help: "Open SMTP connections, by connection.",
		}, []string{"connection"}),
		DeadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "dead_letters_total",
			Help: "Requests copied to the dead-letter stream.",
		}),
		Suppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "suppressed_total",
			Help: "Recipients skipped because they are on the suppression list, by reason (bounce, unsubscribe, manual).",
		}, []string{"reason"}),
		Bounces: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "bounces_total",
			Help: "Recipients added to the suppression list because the server refused them as unknown.",
		}),
		DKIMSigned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "jetmail", Name: "dkim_signed_total",
			Help: "Messages signed with DKIM (one per delivery attempt), by signing domain.",
		}, []string{"domain"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Results, m.SMTPAttempts, m.SMTPSend,
			m.DeliveryLatency, m.Inflight, m.QueuePending, m.Scheduled, m.Cancelled, m.Uncertain, m.AckPending, m.Ready, m.SMTPConnections, m.DeadLetters, m.DKIMSigned,
			m.Suppressed, m.Bounces)
	}
	for _, o := range []string{"accepted", "invalid", "duplicate", "scheduled"} {
		m.Requests.WithLabelValues(o)
	}
	for _, r := range []string{"bounce", "unsubscribe", "manual"} {
		m.Suppressed.WithLabelValues(r)
	}
	for _, l := range []string{"urgent", "normal", "bulk"} {
		m.QueuePending.WithLabelValues(l)
	}
	return m
}

// CancelCounter counts a cancellation that another part of this process
// publishes (the HTTP API's DELETE, the console's Cancel): one message
// ended as cancelled and one result event published, so it adds to both
// jetmail_cancelled_total and jetmail_results_total{state="cancelled",
// status="410"}, as the worker's own cancellations do.
func (m *Metrics) CancelCounter() prometheus.Counter {
	return cancelCounter{Counter: m.Cancelled,
		event: m.Results.WithLabelValues(string(schema.StateCancelled), schema.Status410.String())}
}

// cancelCounter is the Counter of CancelCounter: the cancelled counter,
// whose Inc and Add also count the cancelled event.
type cancelCounter struct {
	prometheus.Counter
	event prometheus.Counter
}

func (c cancelCounter) Inc() { c.Counter.Inc(); c.event.Inc() }

func (c cancelCounter) Add(v float64) { c.Counter.Add(v); c.event.Add(v) }
