package worker

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestHeartbeat checks that a running worker publishes its heartbeat at
// once and then every interval, with its host, concurrency, what it holds
// and its open SMTP connections, and a last one saying Stopping when it
// stops.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	srv := jstest.Start(t)
	nc, js := srv.Connect(t)
	beats := make(chan schema.Heartbeat, 64)
	sub, err := nc.Subscribe("mail.worker.heartbeat", func(m *nats.Msg) {
		var hb schema.Heartbeat
		if err := json.Unmarshal(m.Data, &hb); err != nil {
			t.Errorf("heartbeat is not JSON: %v: %s", err, m.Data)
			return
		}
		beats <- hb
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	smtp := smtptest.NewServer(t)
	b := &testBundle{srv: srv.NATS(), nc: nc, js: js}
	b.startWorker(t, Config{
		Concurrency:       3,
		HeartbeatInterval: 100 * time.Millisecond,
		Connections:       map[string]config.SMTP{"default": {URL: smtp.URL(), From: "noreply@example.com"}},
	})
	next := func(what string) schema.Heartbeat {
		t.Helper()
		select {
		case hb := <-beats:
			return hb
		case <-time.After(10 * time.Second):
			t.Fatalf("no heartbeat (%s) within 10s", what)
		}
		panic("unreachable")
	}
	first := next("first")
	host, _ := os.Hostname()
	if first.Id == "" || first.Host != host || first.Pid != os.Getpid() || first.Concurrency != 3 ||
		first.Transport != "smtp" || first.Interval != 0.1 || first.Stopping || first.Started.IsZero() {
		t.Errorf("first heartbeat %+v: want an Id, host %s, pid %d, concurrency 3, smtp, interval 0.1", first, host, os.Getpid())
	}
	if _, ok := first.SMTPConnections["default"]; !ok {
		t.Errorf("SMTPConnections %v: want the default connection", first.SMTPConnections)
	}

	// A delivery opens an SMTP session, which the pool keeps: a later
	// heartbeat counts it.
	b.publish(t, map[string]any{"Id": "hb-1", "To": "jan@example.com", "Subject": "hi"}, "hb-1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := smtp.WaitMessages(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for hb := next("after the delivery"); hb.SMTPConnections["default"] != 1; hb = next("with the open connection") {
		if hb.Id != first.Id || hb.Started != first.Started {
			t.Fatalf("heartbeat %+v changed its Id or Started from %+v", hb, first)
		}
		if hb.Time.Before(first.Time) {
			t.Fatalf("heartbeat time %s before the first's %s", hb.Time, first.Time)
		}
	}

	b.stop()
	for hb := next("the last"); !hb.Stopping; hb = next("the last") {
	}
	select {
	case hb := <-beats:
		t.Errorf("heartbeat %+v after the one that said Stopping", hb)
	case <-time.After(300 * time.Millisecond):
	}
}
