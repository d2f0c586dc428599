package ratelimit

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// TestPerClient: one bucket per address (an IPv6 /64), refilled with
// time; idle clients are forgotten, and at most max are kept.
func TestPerClient(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := New(1, 2) // one a second, bursts of 2
	l.now = func() time.Time { return now }
	req := func(remote string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/unsubscribe/x", nil)
		r.RemoteAddr = remote
		return r
	}
	for i, c := range []struct {
		remote string
		ok     bool
	}{
		{"192.0.2.1:1000", true}, {"192.0.2.1:1001", true}, {"192.0.2.1:1002", false}, // the port does not matter
		{"192.0.2.2:1000", true},
		{"[2001:db8:1:2::1]:80", true}, {"[2001:db8:1:2:ffff::9]:80", true}, {"[2001:db8:1:2::3]:80", false}, // one /64
		{"[2001:db8:1:3::1]:80", true},
		{"[::ffff:192.0.2.2]:80", true}, {"[::ffff:192.0.2.2]:80", false}, // IPv4-mapped: 192.0.2.2
		{"not an address", true},
	} {
		ok, wait := l.Allow(req(c.remote))
		if ok != c.ok || (!ok && (wait <= 0 || wait > time.Second)) {
			t.Errorf("%d: %s: allowed %v after %s, want %v", i, c.remote, ok, wait, c.ok)
		}
	}
	now = now.Add(time.Second)
	if ok, _ := l.Allow(req("192.0.2.1:1")); !ok {
		t.Error("no token a second later")
	}
	if got, want := ClientKey(req("[2001:db8:1:2::1]:80")), "2001:db8:1:2::/64"; got != want {
		t.Errorf("ClientKey = %q, want %q", got, want)
	}
	// Idle clients (a full bucket again) are dropped when a new one comes.
	now = now.Add(time.Minute)
	l.Allow(req("198.51.100.1:1"))
	if n := len(l.clients); n != 1 {
		t.Errorf("%d clients kept after a minute, want 1", n)
	}
	// At most max.
	l.max = 3
	for i := range 10 {
		l.Allow(req("203.0.113." + strconv.Itoa(i) + ":1"))
	}
	if n, m := len(l.clients), l.lru.Len(); n != 3 || m != 3 {
		t.Errorf("%d clients (%d in the LRU), want 3", n, m)
	}
}
