package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/smtpsink"
)

// TestRateLimitShared sends through one connection from many goroutines
// and checks the limit holds for all of them together: 44 messages at
// 40/s with a burst of 4 cannot take less than a second (the bound is a
// floor, so the test cannot flake on a slow machine).
func TestRateLimitShared(t *testing.T) {
	t.Parallel()
	sink, err := smtpsink.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	tr, err := NewSMTPTransport(map[string]config.SMTP{"default": {URL: sink.URL(), PoolSize: 4, RateLimit: 40}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	req := benchRequest(0)
	start := time.Now()
	var wg sync.WaitGroup
	for range 44 {
		wg.Go(func() {
			env, err := Build(req, BuildOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := tr.Send(context.Background(), env); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if el := time.Since(start); el < 950*time.Millisecond {
		t.Fatalf("44 messages at 40/s took %s, want at least 1s", el)
	}
	if sink.Messages() != 44 {
		t.Fatalf("sink has %d messages", sink.Messages())
	}
	if _, err := NewSMTPTransport(map[string]config.SMTP{"default": {URL: sink.URL(), RateLimit: -1}}, nil, nil); err == nil {
		t.Error("negative rate accepted")
	}
}
