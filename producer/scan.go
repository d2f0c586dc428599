package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// scanRequests calls fn with every request waiting in the request stream
// (queued, deferred, held by a worker, or parked for its SendAt), oldest
// first. A work-queue stream takes no consumer beside the workers', so it
// reads the stream with batched direct gets ($JS.API.DIRECT.GET, which the
// stream allows): batches of up to 256 messages, each a reply on one inbox,
// the batch ended by a 204 status.
func (p *Producer) scanRequests(ctx context.Context, fn func(subject string, hdr nats.Header, data []byte)) error {
	nc := p.js.Conn()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("producer: scan requests: %w", err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	api := "$JS.API.DIRECT.GET." + p.names.RequestStream
	next := uint64(1)
	for {
		req, _ := json.Marshal(map[string]any{"seq": next, "batch": 256, "next_by_subj": p.names.Prefix + ".>"})
		if err := nc.PublishRequest(api, inbox, req); err != nil {
			return fmt.Errorf("producer: scan requests: %w", err)
		}
		got, last := 0, false
		for {
			mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			m, err := sub.NextMsgWithContext(mctx)
			cancel()
			if err != nil {
				return fmt.Errorf("producer: scan requests: %w", err)
			}
			status := m.Header.Get("Status")
			if status == "204" {
				break // the end of this batch
			}
			if status == "404" || status == "408" {
				return nil // nothing (more) to read
			}
			if status != "" {
				return fmt.Errorf("producer: scan requests: status %s %s", status, m.Header.Get("Description"))
			}
			seq, _ := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
			pending, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
			next, got, last = seq+1, got+1, pending == 0
			fn(m.Header.Get("Nats-Subject"), m.Header, m.Data)
		}
		if last || got == 0 {
			return nil
		}
	}
}
