package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/mail"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// TestWorkerProcessSIGKILL kills a worker process with SIGKILL in the
// middle of a batch, starts another, and checks that every message was
// delivered, counting the duplicates: they may only come from messages the
// killed worker held (at most --concurrency plus --prefetch of them), and
// come back after --ack-wait.
// 5,000 messages; 1,000 with -short.
func TestWorkerProcessSIGKILL(t *testing.T) {
	t.Parallel()
	n := 5000
	if testing.Short() {
		n = 1000
	}
	const concurrency, prefetch = 8, 8
	_, url := startNATS(t)
	srv := smtptest.NewServer(t)
	args := []string{"worker", "--nats-url", url, "--smtp-url", srv.URL(), "--smtp-from", "sender@example.com",
		"--concurrency", fmt.Sprint(concurrency), "--prefetch", fmt.Sprint(prefetch), "--smtp-pool-size", "4",
		"--ack-wait", "2s",
		"--http-addr", "127.0.0.1:0", "--log-format", "json"}

	// Not testCtx's 15 s: 5,000 messages, a kill and a restart on a
	// loaded 2-core machine may take longer, and speed is not the point.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var mu sync.Mutex
	finals := map[string]schema.State{}
	progress := make(chan struct{}, 1)
	sub, err := nc.Subscribe("mail.result.*", func(m *nats.Msg) {
		var res schema.Result
		if json.Unmarshal(m.Data, &res) != nil || !res.Final() {
			return
		}
		mu.Lock()
		finals[res.Id] = res.State
		mu.Unlock()
		select {
		case progress <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	countFinals := func() int { mu.Lock(); defer mu.Unlock(); return len(finals) }

	logs := newWatchBuffer()
	cmd := exec.Command(binary, args...)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	if err := logs.waitFor(ctx, `"msg":"worker started"`); err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p, err := producer.New(js)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("kill-%05d", i)
		if _, _, err := p.PublishAsync(&schema.Request{Id: id, To: schema.AddressList{"rcpt@example.com"}, Subject: id, Body: "b"}); err != nil {
			t.Fatal(err)
		}
		if i%500 == 499 {
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()

	// Kill it once a third of the batch is done.
	for countFinals() < n/3 {
		select {
		case <-progress:
		case <-ctx.Done():
			t.Fatalf("only %d results before the kill\n%s", countFinals(), logs)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	atKill := countFinals()

	restarted := exec.Command(binary, args...)
	logs2 := newWatchBuffer()
	restarted.Stderr = logs2
	if err := restarted.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		restarted.Process.Signal(syscall.SIGTERM)
		restarted.Wait()
	})
	for countFinals() < n {
		select {
		case <-progress:
		case <-ctx.Done():
			t.Fatalf("only %d of %d final results after the restart\n%s", countFinals(), n, logs2)
		}
	}

	delivered := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		delivered[msg.Header.Get("Subject")]++
	}
	missing, duplicates := 0, 0
	for i := range n {
		id := fmt.Sprintf("kill-%05d", i)
		switch c := delivered[id]; {
		case c == 0:
			missing++
		case c > 1:
			duplicates += c - 1
		}
		mu.Lock()
		st := finals[id]
		mu.Unlock()
		if st != schema.StateSent {
			t.Errorf("%s ended %q, want sent", id, st)
		}
	}
	t.Logf("SIGKILL after %d of %d messages: %d delivered, %d missing, %d duplicates (bound: %d held by the killed worker)",
		atKill, n, len(delivered), missing, duplicates, concurrency+prefetch)
	if missing > 0 {
		t.Errorf("%d messages lost", missing)
	}
	if duplicates > concurrency+prefetch {
		t.Errorf("%d duplicates, more than the %d messages the killed worker could hold", duplicates, concurrency+prefetch)
	}
}
