package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Test POSTs a signed test event to the webhook c, whatever its States,
// and returns the answer's status and up to 64 KiB of its body, for
// `jetmail webhooks test NAME`. The event is
//
//	{"Id":"test-<24 hex digits>","State":"test","Time":"<RFC 3339>"}
//
// with webhook-id set to the same "test-…" value; a receiver should
// acknowledge it with 2xx like any event and may ignore its State, which
// is never that of a message. A nil client means one that follows no
// redirects and gives up after 10s. err is non-nil only when there was no
// answer (or c is not valid); a non-2xx status is returned as such.
func Test(ctx context.Context, c Config, client *http.Client) (status int, body []byte, err error) {
	if err := c.validate(); err != nil {
		return 0, nil, err
	}
	if client == nil {
		client = newClient(1)
		client.Timeout = DefaultTimeout
		defer client.CloseIdleConnections()
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	id := "test-" + hex.EncodeToString(b[:])
	now := time.Now()
	ev, err := json.Marshal(struct {
		Id    string
		State string
		Time  time.Time
	}{id, "test", now.UTC()})
	if err != nil {
		return 0, nil, fmt.Errorf("webhook %s: test event: %w", c.Name, err)
	}
	status, body, err = post(ctx, client, c, id, now, ev, true)
	if err != nil {
		return 0, nil, fmt.Errorf("webhook %s: test: %w", c.Name, withoutURL(err))
	}
	return status, body, nil
}
