// Package search finds messages by recipient, subject, state, lane, batch
// and time (contract §6, GET /v1/messages). The result stream is the
// source of truth; an Index is a cache of it: an embedded SQLite database
// (modernc.org/sqlite, pure Go) that Run keeps up to date with an ordered
// consumer of the result stream, and rebuilds from the stream when it is
// missing or belongs to another stream.
//
// The index holds one row per message Id: the latest event of the Id
// (byte for byte as stored in the stream), its state, lane and batch, the
// time and stream sequence of its first event, and the envelope of its
// latest accepted or scheduled event, whose recipients (Bcc included, in
// lower case) and subject are what searches by recipient and subject look
// at. Events without an envelope (v1 events, or events seen before the
// accepted one) are indexed by Id, state, lane, batch and time alone.
//
// Messages are ordered newest first by the time of their first event, then
// by the stream sequence of that event: an order that new events of a
// message do not change, so that paging with a cursor neither repeats nor
// skips a message while events keep arriving. A message whose every event
// has left the stream (after the stream's max age, 7 days by default)
// leaves the index at the next prune, within a minute.
package search

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// schemaVersion is the version of the database layout below. An index
// file of another version is emptied and rebuilt from the stream: it is
// only a cache.
const schemaVersion = 1

// schemaSQL creates the tables and indexes of an empty database.
//
// messages has one row per Id; its rowid is the stream sequence of the
// Id's first indexed event, and t0 that event's time (Unix nanoseconds):
// together the sort key, which never changes for a message. seq is the
// sequence of the latest event, which is event; envelope is the JSON of
// the latest envelope seen. (seq has no index: pruning looks at the rows
// whose first event has left the stream, in rowid order.) recipients maps
// each lower-case address of that envelope to the message, with t0, so
// that a search by recipient reads its rows in order from one index;
// subjects holds the lower-case subject of each message with an envelope
// in the sort order, so that a search by a part of the subject scans a
// narrow table rather than the messages.
const schemaSQL = `
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE messages (
	rowid      INTEGER PRIMARY KEY,
	id         TEXT NOT NULL UNIQUE,
	t0         INTEGER NOT NULL,
	seq        INTEGER NOT NULL,
	state      TEXT NOT NULL,
	lane       TEXT,
	batch      TEXT,
	subject_lc TEXT,
	envelope   BLOB,
	event      BLOB NOT NULL
);
CREATE INDEX messages_t0 ON messages (t0);
CREATE INDEX messages_state ON messages (state, t0);
CREATE INDEX messages_lane ON messages (lane, t0);
CREATE INDEX messages_batch ON messages (batch, t0) WHERE batch IS NOT NULL;
CREATE TABLE subjects (
	t0         INTEGER NOT NULL,
	msg        INTEGER NOT NULL,
	subject_lc TEXT NOT NULL,
	PRIMARY KEY (t0, msg)
) WITHOUT ROWID;
CREATE TABLE recipients (
	addr TEXT NOT NULL,
	t0   INTEGER NOT NULL,
	msg  INTEGER NOT NULL,
	PRIMARY KEY (addr, t0, msg)
) WITHOUT ROWID;
`

// Keys of the meta table.
const (
	metaVersion = "schema_version"
	metaSeq     = "seq"            // the last indexed stream sequence
	metaCreated = "stream_created" // the indexed stream's creation time, RFC 3339
)

// ErrInUse is wrapped by the error of Open for an index file that another
// process (or another Index of this one) has open: one index has one
// writer. Test for it with errors.Is.
var ErrInUse = errors.New("search: index in use")

// An Index is the search index of one result stream, in a SQLite file.
// Open one, call Run to keep it up to date, and Search it. Its methods are
// safe for concurrent use; Search may be called while Run writes.
type Index struct {
	path string
	log  *slog.Logger
	lock *os.File // held while open
	wdb  *sql.DB  // the one writer connection
	rdb  *sql.DB  // readers, query_only

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when seq grows
	seq     atomic.Uint64
	created string // the indexed stream's creation time (metaCreated)

	applied    atomic.Int64  // events indexed since Open, for tests
	running    atomic.Bool   // Run is running
	pruneEvery time.Duration // how often Run prunes; tests shorten it
	maxBatch   int           // events per transaction at most
	linger     time.Duration // how long a transaction waits for more events

	closeOnce sync.Once
	closed    atomic.Bool

	stmts writeStmts // of wdb
}

// Open opens the index in the SQLite file at path, creating the file (and
// its folder) when it does not exist. A file of an older layout is emptied,
// to be rebuilt by Run from the stream. A nil logger discards logs. The
// file is locked (path+".lock") until Close: a file that another process
// has open is an error wrapping ErrInUse.
//
// The database is in WAL mode, so that searches never wait for the writer.
// Close the index when done.
func Open(path string, logger *slog.Logger) (*Index, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, errors.New("search: open: empty path")
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	lock, err := lockFile(path)
	if err != nil {
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	dsn := func(extra ...string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Add("_pragma", "temp_store(MEMORY)")
		// Pages are read through a memory map (address space, not memory),
		// so that an index larger than the page cache costs no read(2).
		q.Add("_pragma", "mmap_size(4294967296)")
		for _, p := range extra {
			q.Add("_pragma", p)
		}
		// A URI, so that SQLite takes any character in the path.
		return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	}
	wdb, err := sql.Open("sqlite", dsn("cache_size(-65536)", "analysis_limit(1000)")) // 64 MiB
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	wdb.SetMaxOpenConns(1)
	wdb.SetConnMaxIdleTime(0)
	x := &Index{
		path:       path,
		log:        logger,
		lock:       lock,
		wdb:        wdb,
		changed:    make(chan struct{}),
		pruneEvery: time.Minute,
		maxBatch:   4096,
		linger:     50 * time.Millisecond,
	}
	if err := x.init(); err != nil {
		wdb.Close()
		lock.Close()
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	if err := x.prepare(); err != nil {
		wdb.Close()
		lock.Close()
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	rdb, err := sql.Open("sqlite", dsn("query_only(1)", "cache_size(-16384)")) // 16 MiB each
	if err != nil {
		x.stmts.close()
		wdb.Close()
		lock.Close()
		return nil, fmt.Errorf("search: open %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(4)
	rdb.SetMaxIdleConns(4)
	x.rdb = rdb
	return x, nil
}

// init creates the schema of a new file, empties a file of another
// version, and loads the stored sequence.
func (x *Index) init() error {
	ctx := context.Background()
	tx, err := x.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'`).Scan(&n); err != nil {
		return err
	}
	version := 0
	if n == 1 {
		var v string
		err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaVersion).Scan(&v)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		version, _ = strconv.Atoi(v)
	}
	if version != schemaVersion {
		if n == 1 {
			x.log.Warn("search index has another layout; rebuilding it from the result stream",
				"path", x.path, "version", version, "want_version", schemaVersion)
		}
		for _, t := range []string{"meta", "messages", "recipients", "subjects"} {
			if _, err := tx.ExecContext(ctx, `DROP TABLE IF EXISTS `+t); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, schemaSQL); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?), (?, '0'), (?, '')`,
			metaVersion, strconv.Itoa(schemaVersion), metaSeq, metaCreated); err != nil {
			return err
		}
	}
	var seq, created string
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaSeq).Scan(&seq); err != nil {
		return fmt.Errorf("read the stored sequence: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, metaCreated).Scan(&created); err != nil {
		return fmt.Errorf("read the stored stream: %w", err)
	}
	s, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return fmt.Errorf("stored sequence %q: %w", seq, err)
	}
	x.seq.Store(s)
	x.created = created
	return tx.Commit()
}

// Path is the file of the index.
func (x *Index) Path() string { return x.path }

// Seq is the stream sequence of the last result event indexed: every event
// up to it is in the index. Zero means none.
func (x *Index) Seq() uint64 { return x.seq.Load() }

// WaitSeq waits until the index has indexed the event with stream sequence
// seq (Seq() >= seq), for tests and readiness checks, and returns ctx's
// error when ctx ends first. The event must exist: one deleted from the
// stream before it was indexed is never reached.
func (x *Index) WaitSeq(ctx context.Context, seq uint64) error {
	for {
		x.mu.Lock()
		ch := x.changed
		x.mu.Unlock()
		if x.seq.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("search: waiting for sequence %d (indexed %d): %w", seq, x.seq.Load(), ctx.Err())
		}
	}
}

// setSeq records a committed sequence and wakes WaitSeq.
func (x *Index) setSeq(seq uint64) {
	x.seq.Store(seq)
	x.mu.Lock()
	close(x.changed)
	x.changed = make(chan struct{})
	x.mu.Unlock()
}

// Close closes the database. Stop Run first (end its context and wait for
// it to return); Close does not wait for it. Calling Close more than once
// is harmless.
func (x *Index) Close() error {
	var err error
	x.closeOnce.Do(func() {
		x.closed.Store(true)
		err = errors.Join(x.stmts.close(), x.rdb.Close(), x.wdb.Close(), x.lock.Close())
		if err != nil {
			err = fmt.Errorf("search: close %s: %w", x.path, err)
		}
	})
	return err
}
