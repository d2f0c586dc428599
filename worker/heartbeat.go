package worker

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/jetmail/jetmail/schema"
)

// The heartbeat: while it runs, a worker publishes a schema.Heartbeat on
// Names.HeartbeatSubject (core NATS, not stored) every HeartbeatInterval,
// so that the web console can list the workers that run, with what they
// hold and their open SMTP connections. It reads the same gauges as
// /metrics, so it adds nothing to the deliveries' path. The last heartbeat
// of a stopping worker says Stopping, so that consoles drop it at once
// rather than after a few missed intervals.

// heartbeat publishes the worker's heartbeats until ctx ends, then the
// last one. Run starts it once the worker is ready.
func (w *Worker) heartbeat(ctx context.Context, started time.Time) {
	every := w.cfg.HeartbeatInterval
	if every < 0 {
		return
	}
	host, _ := os.Hostname()
	hb := schema.Heartbeat{
		Id: w.id, Host: host, Pid: os.Getpid(), Started: started,
		Interval: every.Seconds(), Concurrency: w.cfg.Concurrency, Transport: "outbox",
	}
	if w.smtp != nil {
		hb.Transport = "smtp"
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		w.publishHeartbeat(&hb)
		select {
		case <-ctx.Done():
			hb.Stopping = true
			w.publishHeartbeat(&hb)
			_ = w.js.Conn().FlushTimeout(time.Second)
			return
		case <-tick.C:
		}
	}
}

// publishHeartbeat fills in hb's current values and publishes it. A
// heartbeat that cannot be sent is not retried: the next one follows.
func (w *Worker) publishHeartbeat(hb *schema.Heartbeat) {
	hb.Time = w.now().UTC()
	hb.InFlight = int(gaugeValue(w.metrics.Inflight))
	hb.Ready = w.Ready()
	hb.SMTPConnections = nil
	if w.smtp != nil {
		hb.SMTPConnections = make(map[string]int, len(w.cfg.Connections))
		for name := range w.cfg.Connections {
			hb.SMTPConnections[name] = int(gaugeValue(w.metrics.SMTPConnections.WithLabelValues(name)))
		}
	}
	data, err := json.Marshal(hb)
	if err != nil {
		return // not with these fields
	}
	if err := w.js.Conn().Publish(w.cfg.Names.HeartbeatSubject(), data); err != nil {
		w.log.Debug("heartbeat not sent", "error", err)
	}
}

// gaugeValue reads a gauge's value.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil || m.Gauge == nil {
		return 0
	}
	return m.Gauge.GetValue()
}
