package suppress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// DefaultBounceTTL is how long a bounce entry applies unless told
// otherwise: 30 days.
const DefaultBounceTTL = 30 * 24 * time.Hour

// Options configure a Store. The zero value is the contract's defaults.
type Options struct {
	// Replicas is the bucket's replica count. Zero leaves an existing
	// bucket's as they are (clients such as `jetmail suppress` use that)
	// and creates a missing bucket with one; workers pass theirs (3 on a
	// cluster) so that the bucket is created or updated to it.
	Replicas int
	// BounceTTL is how long a bounce entry applies when Add is given no
	// TTL. Default DefaultBounceTTL.
	BounceTTL time.Duration
	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
	// Logger receives the store's and its Checkers' logs. Nil discards
	// them.
	Logger *slog.Logger
}

// Store is the suppression list in its JetStream KV bucket. Every method
// reads or writes the bucket; for the hot path use a Checker. It is safe
// for concurrent use, from any number of processes.
type Store struct {
	kv        jetstream.KeyValue
	js        jetstream.JetStream
	names     schema.Names
	subject   string // "$KV.<bucket>.", the subject prefix of the keys
	bounceTTL time.Duration
	now       func() time.Time
	log       *slog.Logger
}

// Open returns the store of the bucket that names.Suppressions names
// (zero names: the contract's), creating the bucket with
// config.Streams.SuppressionBucket when it is missing, and bringing an
// existing one to that definition (idempotently, so that any number of
// processes may open it at once). See Options.Replicas.
func Open(ctx context.Context, js jetstream.JetStream, names schema.Names, opts Options) (*Store, error) {
	names = names.WithDefaults()
	def := config.Streams{Names: names, Replicas: opts.Replicas}.SuppressionBucket()
	kv, err := js.KeyValue(ctx, def.Bucket)
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("suppress: bucket %s: %w", def.Bucket, err)
	}
	ensure := err != nil || opts.Replicas > 0
	if !ensure {
		// An existing bucket as defined needs no update (nor the right to
		// update streams); else it keeps its replicas.
		st, err := kv.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("suppress: status of bucket %s: %w", def.Bucket, err)
		}
		cur := st.Config()
		ensure = cur.LimitMarkerTTL <= 0 || cur.History != def.History
		def.Replicas = cur.Replicas
	}
	if ensure {
		if kv, err = js.CreateOrUpdateKeyValue(ctx, def); err != nil {
			return nil, fmt.Errorf("suppress: create or update bucket %s: %w", def.Bucket, err)
		}
	}
	s := &Store{
		kv:        kv,
		js:        js,
		names:     names,
		subject:   "$KV." + def.Bucket + ".",
		bounceTTL: opts.BounceTTL,
		now:       opts.Now,
		log:       opts.Logger,
	}
	if s.bounceTTL <= 0 {
		s.bounceTTL = DefaultBounceTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Bucket is the name of the store's KV bucket.
func (s *Store) Bucket() string { return s.kv.Bucket() }

// Change is what Add did.
type Change struct {
	// Entry is the entry in force for the address after Add: the one
	// given, completed, or the stronger one that was kept.
	Entry Entry
	// Previous is the entry the address had before, or nil (an expired
	// entry counts as none).
	Previous *Entry
	// Stored is true when Add wrote the entry given (new, or replacing
	// Previous), false when it kept Previous.
	Stored bool
}

// Add puts e on the list, unless the address (or domain) already has an
// entry that e does not replace (see the package documentation: manual
// beats unsubscribe beats bounce). Its Address may be in any form that
// Canonical takes and is stored canonical; a zero Time is now; Id must be
// empty or a valid message Id. A bounce entry expires after ttl (the
// store's BounceTTL when ttl is zero or less; rounded up to whole seconds,
// as the server counts them), which sets Expires; other entries do not
// expire, and ttl is ignored for them. Concurrent Adds of one address are
// safe: each reads and writes with a compare-and-set. Errors wrap
// ErrInvalidAddress or ErrInvalidReason for bad input.
func (s *Store) Add(ctx context.Context, e Entry, ttl time.Duration) (Change, error) {
	addr, err := Canonical(e.Address)
	if err != nil {
		return Change{}, fmt.Errorf("suppress: add: %w", err)
	}
	e.Address = addr
	return s.add(ctx, e, ttl)
}

// add is Add of an entry whose Address is canonical.
func (s *Store) add(ctx context.Context, e Entry, ttl time.Duration) (Change, error) {
	addr := e.Address
	if !e.Reason.Valid() {
		return Change{}, fmt.Errorf("suppress: add %s: %w: %q", addr, ErrInvalidReason, e.Reason)
	}
	if e.Id != "" && !schema.ValidID(e.Id) {
		return Change{}, fmt.Errorf("suppress: add %s: Id %q is not a valid message Id", addr, e.Id)
	}
	now := s.now()
	e.Expires = nil
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Time = e.Time.UTC()
	if e.Reason != Bounce {
		ttl = 0
	} else {
		if ttl <= 0 {
			ttl = s.bounceTTL
		}
		ttl = (ttl + time.Second - 1).Truncate(time.Second)
		exp := now.Add(ttl).UTC()
		e.Expires = &exp
	}
	data, err := json.Marshal(e)
	if err != nil {
		return Change{}, fmt.Errorf("suppress: add %s: %w", addr, err)
	}
	key := keyOf(addr)
	for attempt := 1; ; attempt++ {
		if attempt > maxCAS {
			return Change{}, fmt.Errorf("suppress: add %s: %d writers in a row came first", addr, maxCAS)
		}
		cur, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			var opts []jetstream.KVCreateOpt
			if ttl > 0 {
				opts = append(opts, jetstream.KeyTTL(ttl))
			}
			_, err = s.kv.Create(ctx, key, data, opts...)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // another writer was first: look again
			}
			if err != nil {
				return Change{}, fmt.Errorf("suppress: add %s: %w", addr, err)
			}
			s.log.DebugContext(ctx, "suppression added", "address", addr, "reason", e.Reason, "id", e.Id)
			return Change{Entry: e, Stored: true}, nil
		}
		if err != nil {
			return Change{}, fmt.Errorf("suppress: add %s: %w", addr, err)
		}
		var prev *Entry
		if old, err := decodeEntry(cur.Value()); err == nil && !old.Expired(now) {
			old.Address = addr
			prev = &old
			if !e.Reason.replaces(old.Reason) {
				return Change{Entry: old, Previous: prev, Stored: false}, nil
			}
		}
		err = s.update(ctx, key, data, cur.Revision(), ttl)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return Change{}, fmt.Errorf("suppress: add %s: %w", addr, err)
		}
		s.log.DebugContext(ctx, "suppression replaced", "address", addr, "reason", e.Reason, "id", e.Id)
		return Change{Entry: e, Previous: prev, Stored: true}, nil
	}
}

// maxCAS bounds the compare-and-set rounds of one Add.
const maxCAS = 100

// update writes a key's new value if its last revision is still rev, with
// a TTL when ttl > 0 (KeyValue.Update has none: it removes a key's TTL).
func (s *Store) update(ctx context.Context, key string, data []byte, rev uint64, ttl time.Duration) error {
	m := &nats.Msg{Subject: s.subject + key, Header: nats.Header{}, Data: data}
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	_, err := s.js.PublishMsg(ctx, m, opts...)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
	}
	return err
}

// Get returns the entry of exactly address (or "@domain"): it does not
// look at domain entries (Match does). It fails with ErrNotFound when
// there is none or it has expired.
func (s *Store) Get(ctx context.Context, address string) (Entry, error) {
	addr, err := Canonical(address)
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: get: %w", err)
	}
	e, _, err := s.get(ctx, addr)
	return e, err
}

// get reads the unexpired entry of a canonical address, and its revision.
func (s *Store) get(ctx context.Context, addr string) (Entry, uint64, error) {
	kve, err := s.kv.Get(ctx, keyOf(addr))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{}, 0, fmt.Errorf("suppress: %s: %w", addr, ErrNotFound)
	}
	if err != nil {
		return Entry{}, 0, fmt.Errorf("suppress: get %s: %w", addr, err)
	}
	e, err := decodeEntry(kve.Value())
	if err != nil {
		return Entry{}, 0, fmt.Errorf("suppress: get %s: revision %d: %w", addr, kve.Revision(), err)
	}
	if e.Expired(s.now()) {
		return Entry{}, 0, fmt.Errorf("suppress: %s: %w (expired %s)", addr, ErrNotFound, e.Expires.Format(time.RFC3339))
	}
	e.Address = addr
	return e, kve.Revision(), nil
}

// Match returns the entry that suppresses address: its own, else that of
// its domain or of the nearest parent domain with one (for
// jan@mail.example.com: @mail.example.com, then @example.com, then @com).
// For "@domain" it looks at the domain and its parents. It does not apply
// the scope rules (Checker.Check does). ErrNotFound when none applies.
func (s *Store) Match(ctx context.Context, address string) (Entry, error) {
	addr, err := Canonical(address)
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: match: %w", err)
	}
	for _, cand := range candidates(addr) {
		e, _, err := s.get(ctx, cand)
		if !errors.Is(err, ErrNotFound) {
			return e, err
		}
	}
	return Entry{}, fmt.Errorf("suppress: %s: %w", addr, ErrNotFound)
}

// candidates are the entries that may suppress a canonical address, the
// most specific first: the address, its domain, the domain's parents.
func candidates(addr string) []string {
	var out []string
	domain := addr[1:]
	if !isDomain(addr) {
		out = append(out, addr)
		domain = addr[strings.LastIndexByte(addr, '@')+1:]
	}
	for {
		out = append(out, "@"+domain)
		i := strings.IndexByte(domain, '.')
		if i < 0 || strings.HasPrefix(domain, "[") {
			return out
		}
		domain = domain[i+1:]
	}
}

// Remove takes the entry of exactly address (or "@domain") off the list
// and returns it; ErrNotFound when there is none (or it has expired).
func (s *Store) Remove(ctx context.Context, address string) (Entry, error) {
	addr, err := Canonical(address)
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: remove: %w", err)
	}
	for {
		e, rev, err := s.get(ctx, addr)
		if err != nil {
			return Entry{}, err
		}
		// Purge leaves one marker, which the server removes after the
		// bucket's LimitMarkerTTL, so removed keys do not pile up.
		err = s.kv.Purge(ctx, keyOf(addr), jetstream.LastRevision(rev), jetstream.PurgeTTL(config.SuppressionMarkerTTL))
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // changed meanwhile: remove what is there now
		}
		if err != nil {
			return Entry{}, fmt.Errorf("suppress: remove %s: %w", addr, err)
		}
		s.log.DebugContext(ctx, "suppression removed", "address", addr, "reason", e.Reason)
		return e, nil
	}
}

// List yields every unexpired entry, in the order they were last written
// (oldest first), as one pass over the bucket. An entry that cannot be
// read is yielded as an error that wraps ErrMalformed, and the listing
// goes on; a failure to read the bucket ends it with another error.
func (s *Store) List(ctx context.Context) iter.Seq2[Entry, error] {
	return func(yield func(Entry, error) bool) {
		ctx, cancel := context.WithCancel(ctx) // ends the watch
		defer cancel()
		w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
		if err != nil {
			yield(Entry{}, fmt.Errorf("suppress: list %s: %w", s.Bucket(), err))
			return
		}
		defer stopWatcher(w)
		now := s.now()
		for {
			var kve jetstream.KeyValueEntry
			var ok bool
			select {
			case kve, ok = <-w.Updates():
			case <-ctx.Done():
				yield(Entry{}, fmt.Errorf("suppress: list %s: %w", s.Bucket(), ctx.Err()))
				return
			}
			switch {
			case !ok && ctx.Err() != nil:
				yield(Entry{}, fmt.Errorf("suppress: list %s: %w", s.Bucket(), ctx.Err()))
				return
			case !ok:
				yield(Entry{}, fmt.Errorf("suppress: list %s: %w", s.Bucket(), nats.ErrConnectionClosed))
				return
			case kve == nil:
				return // every entry seen
			}
			e, err := entryOf(kve)
			if err != nil {
				if !yield(Entry{}, err) {
					return
				}
				continue
			}
			if !e.Expired(now) && !yield(e, nil) {
				return
			}
		}
	}
}

// entryOf decodes a KV entry (a put) into its Entry, with the address of
// its key. Errors wrap ErrMalformed.
func entryOf(kve jetstream.KeyValueEntry) (Entry, error) {
	addr, err := DecodeKey(kve.Key())
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: revision %d: %w: %w", kve.Revision(), ErrMalformed, err)
	}
	e, err := decodeEntry(kve.Value())
	if err != nil {
		return Entry{}, fmt.Errorf("suppress: %s: revision %d: %w: %w", addr, kve.Revision(), ErrMalformed, err)
	}
	e.Address = addr
	return e, nil
}

// decodeEntry reads a stored value.
func decodeEntry(data []byte) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil {
		return Entry{}, fmt.Errorf("not a suppression entry: %w", err)
	}
	if !e.Reason.Valid() {
		return Entry{}, fmt.Errorf("not a suppression entry: %w: %q", ErrInvalidReason, e.Reason)
	}
	return e, nil
}

// stopWatcher stops w and drains its updates until they are closed, so
// that the client's delivery goroutine, which may be blocked handing over
// an update, can end.
func stopWatcher(w jetstream.KeyWatcher) {
	_ = w.Stop()
	go func() {
		for range w.Updates() {
		}
	}()
}
