package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/jstest"
	"github.com/jetmail/jetmail/internal/smtpsink"
	"github.com/jetmail/jetmail/schema"
)

// benchRequest is a small (about 2 KB) message.
func benchRequest(i int) *schema.Request {
	return &schema.Request{
		Id:      fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i),
		To:      schema.AddressList{"rcpt@example.com"},
		From:    "sender@example.com",
		Subject: "Benchmark message",
		Body:    strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 32),
	}
}

// BenchmarkDirectSMTP sends messages straight to the SMTP sink through
// jetmail's SMTP transport with the same concurrency and pool as the
// end-to-end benchmark: the ceiling for jetmail on this machine.
func BenchmarkDirectSMTP(b *testing.B) {
	srv, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	tr, err := NewSMTPTransport(map[string]config.SMTP{"default": {URL: srv.URL(), PoolSize: 8}}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				env, err := Build(benchRequest(int(i)), BuildOptions{})
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := tr.Send(context.Background(), env); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkEndToEnd publishes b.N requests and waits until every final
// result is in: publish → JetStream → worker → SMTP sink → result.
func BenchmarkEndToEnd(b *testing.B) {
	srv, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	tb := &testBundle{srv: jstest.Start(b).NATS()}
	tb.nc, tb.js = jstest.Connect(b, tb.srv.ClientURL())
	var finals atomic.Int64
	done := make(chan struct{}, 1)
	target := int64(b.N)
	sub, err := tb.nc.Subscribe("mail.result.>", func(m *nats.Msg) {
		var r schema.Result
		if json.Unmarshal(m.Data, &r) == nil && r.Final() {
			if finals.Add(1) == target {
				done <- struct{}{}
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	tb.startWorker(b, Config{Concurrency: 16, Connections: map[string]config.SMTP{"default": {URL: srv.URL(), PoolSize: 8}}})
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		data, _ := json.Marshal(benchRequest(i))
		if _, err := tb.js.PublishAsync("mail.send", data); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-tb.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d final results", finals.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

var _ = jetstream.MsgIDHeader

// BenchmarkCancelCheck is the cost of the cancellation check a delivery
// makes (twice), with 100,000 cancelled batches and Ids marked.
func BenchmarkCancelCheck(b *testing.B) {
	c := newCancelSet()
	for i := range 100000 {
		c.batches[fmt.Sprintf("batch-%d", i)] = struct{}{}
		c.ids[fmt.Sprintf("id-%d", i)] = struct{}{}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if c.cancelled("some-message-id", "newsletter-2026-12") {
				b.Fatal("not cancelled")
			}
		}
	})
}
