package webhook

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/schema"
)

func TestTestEvent(t *testing.T) {
	t.Parallel()
	r := newReceiver(t, testKey)
	c := hookTo("crm", r, schema.StateFailed) // the states do not apply
	status, body, err := Test(context.Background(), c, nil)
	if err != nil || status != 200 {
		t.Fatalf("Test = %d, %v", status, err)
	}
	r.mu.Lock()
	var id string
	var got []byte
	for k, v := range r.delivered {
		id, got = k, v[0]
	}
	r.mu.Unlock()
	if string(body) != "ok "+id || !strings.HasPrefix(id, "test-") || len(id) != len("test-")+24 {
		t.Errorf("answer %q for webhook-id %q", body, id)
	}
	var ev schema.Result
	if err := json.Unmarshal(got, &ev); err != nil || ev.Id != id || ev.State != "test" || time.Since(ev.Time) > time.Minute {
		t.Errorf("test event %s: %+v, %v", got, ev, err)
	}

	r.set(func(r *receiver) { r.fail = 1 })
	if status, _, err := Test(context.Background(), c, nil); err != nil || status != 500 {
		t.Errorf("Test against a failing endpoint = %d, %v; want 500 and no error", status, err)
	}

	c.URL = "http://127.0.0.1:1/hook?token=secret-token"
	if _, _, err := Test(context.Background(), c, nil); err == nil || strings.Contains(err.Error(), "secret-token") {
		t.Errorf("Test of an endpoint that is not there: %v", err)
	}
	if _, _, err := Test(context.Background(), Config{Name: "x"}, nil); err == nil {
		t.Error("Test of an invalid Config: no error")
	}
}
