package suppress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// Checker answers whether recipients are suppressed from an in-memory copy
// of the list, which a watch of the bucket keeps current: a check is a few
// map look-ups under a read lock, with no NATS round trip and (for
// lower-case ASCII addresses, as most are) no allocation. Changes made anywhere (another worker, the CLI, the HTTP
// API) reach it within a round trip of the server. It is safe for
// concurrent use.
//
// The copy is complete once Ready reports true; before that, Check knows
// only the entries loaded so far, so a worker waits for Ready before it
// takes messages. While NATS is unreachable the copy stays as it was, and
// it catches up when NATS is back: after a server restart, once the
// watch's consumer has missed its heartbeats and been recreated (about
// 20 s).
type Checker struct {
	store *Store
	now   func() time.Time
	log   *slog.Logger
	ran   atomic.Bool

	readyOnce sync.Once
	ready     chan struct{} // closed when the initial values are in
	isReady   atomic.Bool

	mu      sync.RWMutex
	list    list
	changed chan struct{} // closed at the next change; nil until Changed asks
}

// NewChecker returns an empty checker of the store's list, after checking
// that the bucket can be reached. Run, which the caller owns, loads the
// list and keeps it current.
func NewChecker(ctx context.Context, s *Store) (*Checker, error) {
	if _, err := s.kv.Status(ctx); err != nil {
		return nil, fmt.Errorf("suppress: bucket %s: %w", s.Bucket(), err)
	}
	return &Checker{
		store: s,
		now:   s.now,
		log:   s.log,
		ready: make(chan struct{}),
		list:  newList(),
	}, nil
}

// Run watches the bucket and applies its updates until ctx ends (then it
// returns nil) or the watch does (the NATS connection was closed: an
// error); it fails at once when the watch cannot be created. Call it once.
func (c *Checker) Run(ctx context.Context) error {
	if !c.ran.CompareAndSwap(false, true) {
		return errors.New("suppress: Checker.Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx) // ends the watch
	defer cancel()
	w, err := c.store.kv.WatchAll(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("suppress: watch bucket %s: %w", c.store.Bucket(), err)
	}
	defer stopWatcher(w)
	for {
		select {
		case <-ctx.Done():
			return nil
		case kve, ok := <-w.Updates():
			switch {
			case ok:
				c.apply(kve)
			case ctx.Err() != nil:
				return nil
			default:
				return fmt.Errorf("suppress: watch of bucket %s ended: %w", c.store.Bucket(), nats.ErrConnectionClosed)
			}
		}
	}
}

// apply takes one update of the watch: nil marks the end of the initial
// values.
func (c *Checker) apply(kve jetstream.KeyValueEntry) {
	if kve == nil {
		c.readyOnce.Do(func() {
			c.isReady.Store(true)
			close(c.ready)
			c.log.Info("suppression list loaded", "bucket", c.store.Bucket(), "entries", c.Len())
		})
		return
	}
	addr, err := DecodeKey(kve.Key())
	if err != nil {
		c.log.Warn("suppression list: key ignored", "key", kve.Key(), "revision", kve.Revision(), "error", err)
		return
	}
	var e Entry
	del := kve.Operation() != jetstream.KeyValuePut
	if !del {
		if e, err = entryOf(kve); err != nil {
			// What the key held before is no longer there either.
			c.log.Warn("suppression list: entry ignored", "key", kve.Key(), "revision", kve.Revision(), "error", err)
			del = true
		}
	}
	c.mu.Lock()
	if del {
		c.list.remove(addr)
	} else {
		c.list.put(e)
	}
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
	c.mu.Unlock()
}

// Ready reports whether the checker has loaded the whole list.
func (c *Checker) Ready() bool { return c.isReady.Load() }

// WaitReady blocks until the checker has loaded the whole list, or ctx
// ends (its error).
func (c *Checker) WaitReady(ctx context.Context) error {
	select {
	case <-c.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("suppress: waiting for the list to load: %w", ctx.Err())
	}
}

// Changed returns a channel that is closed at the next change to the
// checker's copy, for tests and pages that wait for one.
func (c *Checker) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

// Len is the number of entries in the checker's copy (expired ones not yet
// deleted by the server included).
func (c *Checker) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.list.addrs) + len(c.list.domains)
}

// Check returns the entry that suppresses address for a message of lane
// l, carrying Unsubscribe or not (unsubscribeMsg), and true; or false.
// The address is a bare address, as in the envelope (case does not
// matter); its own entry is looked at first, then those of its domain and
// the domain's parents. An entry that does not apply (see Entry.Applies)
// or has expired is passed over.
func (c *Checker) Check(address string, l schema.Lane, unsubscribeMsg bool) (Entry, bool) {
	if strings.HasSuffix(address, ">") { // with a display name, off the hot path
		if a, err := Canonical(address); err == nil {
			address = a
		}
	}
	c.mu.RLock()
	e, ok := c.list.check(address, l, unsubscribeMsg, c.now)
	c.mu.RUnlock()
	return e, ok
}

// Skipped is a recipient that Skip took out of a message.
type Skipped struct {
	// Index is the recipient's index in the list given to Skip.
	Index int
	// Address is the recipient as given.
	Address string
	// Entry is the entry that suppresses it.
	Entry Entry
}

// Skip applies the list to one delivery attempt of req, in lane l (the
// lane of the subject it arrived on), to the bare addresses of its
// recipients (Bcc included): it returns those to send to and those
// skipped. keep is recipients itself when none is skipped (no
// allocation); with IgnoreSuppression nothing is skipped. It holds the
// read lock once for the message.
func (c *Checker) Skip(req *schema.Request, l schema.Lane, recipients []string) (keep []string, skipped []Skipped) {
	if req != nil && bool(req.IgnoreSuppression) {
		return recipients, nil
	}
	unsub := req != nil && !req.Unsubscribe.IsZero()
	c.mu.RLock()
	for i, r := range recipients {
		if e, ok := c.list.check(r, l, unsub, c.now); ok {
			skipped = append(skipped, Skipped{Index: i, Address: r, Entry: e})
		}
	}
	c.mu.RUnlock()
	if len(skipped) == 0 {
		return recipients, nil
	}
	keep = make([]string, 0, len(recipients)-len(skipped))
	next := 0
	for i, r := range recipients {
		if next < len(skipped) && skipped[next].Index == i {
			next++
			continue
		}
		keep = append(keep, r)
	}
	return keep, skipped
}

// list is the in-memory copy of the suppression list. It is not safe for
// concurrent use: Checker guards it.
type list struct {
	addrs   map[string]Entry // by canonical address
	domains map[string]Entry // by domain, without "@"
}

func newList() list { return list{addrs: map[string]Entry{}, domains: map[string]Entry{}} }

// put adds or replaces the entry of e.Address (canonical).
func (l *list) put(e Entry) {
	if isDomain(e.Address) {
		l.domains[e.Address[1:]] = e
	} else {
		l.addrs[e.Address] = e
	}
}

// remove deletes the entry of a canonical address.
func (l *list) remove(addr string) {
	if isDomain(addr) {
		delete(l.domains, addr[1:])
	} else {
		delete(l.addrs, addr)
	}
}

// check finds the first entry that suppresses address (or @domain), in
// any case: its own, then its domain's and the parents'. now is read only
// for an entry with an expiry. strings.ToLower returns a lower-case ASCII
// address as it is, so checking one does not allocate.
func (l *list) check(address string, lane schema.Lane, unsub bool, now func() time.Time) (Entry, bool) {
	usable := func(e Entry) bool { return e.Applies(lane, unsub) && (e.Expires == nil || now().Before(*e.Expires)) }
	addr := strings.ToLower(address)
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return Entry{}, false
	}
	if e, ok := l.addrs[addr]; ok && usable(e) {
		return e, true
	}
	if len(l.domains) == 0 {
		return Entry{}, false
	}
	d := addr[at+1:]
	for {
		if e, ok := l.domains[d]; ok && usable(e) {
			return e, true
		}
		i := strings.IndexByte(d, '.')
		if i < 0 || d[0] == '[' {
			return Entry{}, false
		}
		d = d[i+1:]
	}
}
