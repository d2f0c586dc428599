// Package ratelimit limits requests per client address, for the endpoints
// that anyone may call: the one-click unsubscribe of the HTTP API and the
// console's login form.
package ratelimit

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// PerClient is a token bucket per client address, kept for the most
// recently seen clients only: an LRU of at most maxClients, from which a
// client idle long enough to have a full bucket again drops out (nothing
// is lost by forgetting it). It is safe for concurrent use.
type PerClient struct {
	limit rate.Limit
	burst int
	idle  time.Duration // after which a client's bucket is full again
	max   int
	now   func() time.Time

	mu      sync.Mutex
	lru     *list.List // of *clientBucket, the most recent first
	clients map[string]*list.Element
}

type clientBucket struct {
	key  string
	lim  *rate.Limiter
	seen time.Time
}

// maxClients bounds the memory of a PerClient: about 200 bytes each.
const maxClients = 10000

// New returns a PerClient that lets each client make burst requests at
// once and limit a second after that.
func New(limit rate.Limit, burst int) *PerClient {
	return &PerClient{
		limit:   limit,
		burst:   burst,
		idle:    time.Duration(float64(burst) / float64(limit) * float64(time.Second)),
		max:     maxClients,
		now:     time.Now,
		lru:     list.New(),
		clients: map[string]*list.Element{},
	}
}

// Allow takes a token for the client of r, or says how long until there
// is one.
func (l *PerClient) Allow(r *http.Request) (bool, time.Duration) {
	key := ClientKey(r)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	el, ok := l.clients[key]
	if ok {
		l.lru.MoveToFront(el)
	} else {
		for back := l.lru.Back(); back != nil; back = l.lru.Back() {
			b := back.Value.(*clientBucket)
			if l.lru.Len() < l.max && now.Sub(b.seen) < l.idle {
				break
			}
			l.lru.Remove(back)
			delete(l.clients, b.key)
		}
		el = l.lru.PushFront(&clientBucket{key: key, lim: rate.NewLimiter(l.limit, l.burst)})
		l.clients[key] = el
	}
	b := el.Value.(*clientBucket)
	b.seen = now
	res := b.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// ClientKey is the client's IP address (the connection's peer, not a
// header a client could forge); for IPv6 its /64, which one subscriber
// usually has whole.
func ClientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
