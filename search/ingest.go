package search

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/schema"
)

// errStreamChanged ends one follow of the stream: the stream is not the
// one being followed any more (deleted and created again, or purged).
var errStreamChanged = errors.New("result stream changed")

// Run keeps the index up to date with the result stream of names (zero
// fields: the contract's defaults) until ctx ends, and then returns nil.
//
// It follows the stream with an ordered consumer from the event after
// Seq, and writes the events in batched transactions that also store the
// sequence, so that a restarted Run goes on where the last one stopped.
// When the stream is not the one indexed (it was deleted and created
// again), the index is emptied and rebuilt from the stream's first event;
// when the stream's first sequence is beyond Seq (events expired before
// they were indexed, or the stream was purged), the index drops what the
// stream no longer has and skips ahead. Every minute it drops the messages
// whose events have all left the stream.
//
// A missing stream (no worker has run yet), a lost NATS connection and
// database errors are logged and retried with a backoff of up to 30 s;
// they do not end Run. Run returns an error only when it is called while
// another Run of the same Index is running, or the index was closed.
func (x *Index) Run(ctx context.Context, js jetstream.JetStream, names schema.Names) error {
	if js == nil {
		return errors.New("search: Run needs a JetStream, got nil")
	}
	if !x.running.CompareAndSwap(false, true) {
		return errors.New("search: Run is already running for this index")
	}
	defer x.running.Store(false)
	names = names.WithDefaults()
	const maxWait = 30 * time.Second
	wait := 500 * time.Millisecond
	for {
		before := x.applied.Load()
		err := x.follow(ctx, js, names)
		if ctx.Err() != nil {
			return nil
		}
		if x.closed.Load() {
			return fmt.Errorf("search: index %s closed while Run was running: %w", x.path, err)
		}
		if errors.Is(err, errStreamChanged) {
			x.log.Info("search index: the result stream changed; following it again", "stream", names.ResultStream)
			continue
		}
		if x.applied.Load() > before {
			wait = 500 * time.Millisecond
		}
		level := slog.LevelWarn
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			level = slog.LevelInfo // a worker creates it as it starts
		}
		x.log.Log(ctx, level, "search index: following the result stream failed; retrying",
			"stream", names.ResultStream, "seq", x.Seq(), "retry_in", wait, "error", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
		wait = min(2*wait, maxWait)
	}
}

// follow reads the stream from the event after Seq until ctx ends or
// something fails; it returns when its goroutines have.
func (x *Index) follow(ctx context.Context, js jetstream.JetStream, names schema.Names) error {
	stream, err := js.Stream(ctx, names.ResultStream)
	if err != nil {
		return fmt.Errorf("result stream %s: %w", names.ResultStream, err)
	}
	info := stream.CachedInfo()
	if err := x.reconcile(ctx, info); err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{names.ResultSubjects()},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	}
	if seq := x.Seq(); seq > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = seq + 1
	}
	cons, err := js.OrderedConsumer(ctx, names.ResultStream, cfg)
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", names.ResultStream, err)
	}
	defer func() {
		if ci := cons.CachedInfo(); ci != nil {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = js.DeleteConsumer(dctx, names.ResultStream, ci.Name)
		}
	}()
	it, err := cons.Messages(jetstream.PullMaxMessages(x.maxBatch))
	if err != nil {
		return fmt.Errorf("reading %s: %w", names.ResultStream, err)
	}
	defer it.Stop()
	x.log.Info("search index following the result stream", "stream", names.ResultStream,
		"from_seq", x.Seq()+1, "stream_last_seq", info.State.LastSeq)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs := make(chan jetstream.Msg, x.maxBatch)
	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- x.read(ctx, it, msgs) })
	wg.Go(func() { errc <- x.write(ctx, msgs, names.ResultSubject("")) })
	wg.Go(func() { errc <- x.pruneLoop(ctx, stream, info.Created) })
	err = <-errc // each returns only on an error or when ctx ends
	cancel()
	it.Stop()
	wg.Wait()
	return err
}

// read passes the consumer's messages to the writer.
func (x *Index) read(ctx context.Context, it jetstream.MessagesContext, msgs chan<- jetstream.Msg) error {
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading result events: %w", err)
		}
		select {
		case msgs <- msg:
		case <-ctx.Done():
			return nil
		}
	}
}

// write indexes the messages in batches: each transaction takes every
// message waiting, up to maxBatch, and what arrives within linger after the
// first, so that batches grow with the load.
func (x *Index) write(ctx context.Context, msgs <-chan jetstream.Msg, subjectPrefix string) error {
	batch := make([]jetstream.Msg, 0, x.maxBatch)
	for {
		batch = batch[:0]
		select {
		case m := <-msgs:
			batch = append(batch, m)
		case <-ctx.Done():
			return nil
		}
		// Linger a little for more: a message's events come close
		// together (accepted, then sent a few milliseconds later), and
		// one transaction that holds them all writes its row once, not
		// once per event; commits, the dearest part, become rare too.
		linger := time.NewTimer(x.linger)
	more:
		for len(batch) < x.maxBatch {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			case <-linger.C:
				break more
			case <-ctx.Done():
				break more
			}
		}
		linger.Stop()
		if err := x.apply(ctx, batch, subjectPrefix); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("indexing %d result events: %w", len(batch), err)
		}
	}
}

// eventFields are the parts of a result event that the index looks at.
type eventFields struct {
	State    string          `json:"State"`
	Lane     string          `json:"Lane"`
	BatchId  string          `json:"BatchId"`
	Time     time.Time       `json:"Time"`
	Envelope json.RawMessage `json:"Envelope"`
}

// envelopeFields are the parts of an envelope that the index looks at.
type envelopeFields struct {
	Recipients []string `json:"Recipients"`
	Subject    string   `json:"Subject"`
}

// update is what one batch changes about one Id.
type update struct {
	id        string
	first     uint64 // sequence of the Id's first event in the batch
	t0        int64  // time of that event
	seq       uint64 // sequence of its latest event in the batch
	state     string
	lane      string
	batch     string
	event     []byte
	envelope  []byte // the latest envelope in the batch, if any
	subjectLC string
	rcpts     []string // lower case, without duplicates
}

// apply indexes one batch of messages in one transaction.
func (x *Index) apply(ctx context.Context, msgs []jetstream.Msg, subjectPrefix string) error {
	// A batch is written whole once begun. A context that cannot end also
	// spares the SQLite driver a goroutine per statement, which it starts
	// to interrupt the statement when a context is done.
	ctx = context.WithoutCancel(ctx)
	var (
		updates []*update
		byID    = map[string]*update{}
		last    uint64
	)
	for _, m := range msgs {
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("metadata of a result event on %s: %w", m.Subject(), err)
		}
		seq := md.Sequence.Stream
		if seq <= x.Seq() {
			continue // already indexed
		}
		last = seq
		id, ok := strings.CutPrefix(m.Subject(), subjectPrefix)
		if !ok || !schema.ValidID(id) {
			x.log.Warn("search index: skipping an event on an unexpected subject", "subject", m.Subject(), "seq", seq)
			continue
		}
		var ev eventFields
		if err := json.Unmarshal(m.Data(), &ev); err != nil {
			x.log.Warn("search index: skipping a result event that does not decode", "id", id, "seq", seq, "error", err)
			continue
		}
		t := ev.Time
		if t.IsZero() {
			t = md.Timestamp
		}
		u := byID[id]
		if u == nil {
			u = &update{id: id, first: seq, t0: t.UnixNano()}
			byID[id] = u
			updates = append(updates, u)
		}
		u.seq, u.state, u.event = seq, ev.State, m.Data()
		if ev.Lane != "" {
			u.lane = ev.Lane
		}
		if ev.BatchId != "" {
			u.batch = ev.BatchId
		}
		if len(ev.Envelope) > 0 && string(ev.Envelope) != "null" {
			var env envelopeFields
			if err := json.Unmarshal(ev.Envelope, &env); err != nil {
				x.log.Warn("search index: ignoring an envelope that does not decode", "id", id, "seq", seq, "error", err)
			} else {
				u.envelope, u.subjectLC, u.rcpts = ev.Envelope, strings.ToLower(env.Subject), lowerSet(env.Recipients)
			}
		}
	}
	if last == 0 {
		return nil
	}

	tx, err := x.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	st := x.stmts.in(ctx, tx)
	defer st.close()
	for _, u := range updates {
		args := []any{int64(u.first), u.id, u.t0, int64(u.seq), u.state, nullable(u.lane), nullable(u.batch), u.event}
		if u.envelope != nil {
			args = append(args, u.subjectLC, u.envelope)
		}
		var rowid, t0 int64
		var lane, batch sql.NullString
		// Most envelopes are those of a message the index has not seen:
		// inserting it is one statement, where looking for an earlier
		// envelope and then upserting are two.
		inserted := false
		if u.envelope != nil {
			switch err := st.insertEnv.QueryRowContext(ctx, args...).Scan(&rowid, &t0, &lane, &batch); {
			case err == nil:
				inserted = true
			case !errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("index %s: %w", u.id, err)
			}
		}
		if u.envelope != nil && !inserted {
			// A message's recipients are those of its latest envelope: drop
			// those of an earlier one.
			var env []byte
			switch err := st.oldEnv.QueryRowContext(ctx, u.id).Scan(&rowid, &t0, &env); {
			case errors.Is(err, sql.ErrNoRows):
			case err != nil:
				return err
			default:
				if err := deleteRecipients(ctx, st.delRcpt, env, t0, rowid); err != nil {
					return err
				}
			}
		}
		if !inserted {
			// The upserts change only the columns that change with every
			// event, so that the indexes of the others are left alone.
			upsert := st.upsert
			if u.envelope != nil {
				upsert = st.upsertEnv
			}
			if err := upsert.QueryRowContext(ctx, args...).Scan(&rowid, &t0, &lane, &batch); err != nil {
				return fmt.Errorf("index %s: %w", u.id, err)
			}
		}
		if (!lane.Valid && u.lane != "") || (!batch.Valid && u.batch != "") {
			// Known only from a later event (one before the accepted event
			// had none).
			if _, err := st.setLane.ExecContext(ctx, nullable(u.lane), nullable(u.batch), rowid); err != nil {
				return fmt.Errorf("index %s: %w", u.id, err)
			}
		}
		if u.envelope != nil {
			if _, err := st.setSubject.ExecContext(ctx, t0, rowid, u.subjectLC); err != nil {
				return fmt.Errorf("index %s: subject: %w", u.id, err)
			}
		}
		for _, a := range u.rcpts {
			if _, err := st.insRcpt.ExecContext(ctx, a, t0, rowid); err != nil {
				return fmt.Errorf("index %s: recipient: %w", u.id, err)
			}
		}
	}
	if err := setMeta(ctx, tx, metaSeq, strconv.FormatUint(last, 10)); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	x.applied.Add(int64(len(msgs)))
	x.setSeq(last)
	return nil
}

// writeStmts are the statements of the writer, prepared once.
type writeStmts struct {
	upsert, upsertEnv, insertEnv, setLane, setSubject, insRcpt, oldEnv, delRcpt, delSubject, delMsg *sql.Stmt
}

// The statements of writeStmts. An upsert inserts a new message with
// rowid and t0 of its first event, or updates the columns that change
// with each event; upsertEnv also the envelope. insertEnv inserts a
// message with its envelope only if the index has none of that Id.
const (
	upsertSQL = `
		INSERT INTO messages (rowid, id, t0, seq, state, lane, batch, event)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, state = excluded.state, event = excluded.event
		RETURNING rowid, t0, lane, batch`
	upsertEnvSQL = `
		INSERT INTO messages (rowid, id, t0, seq, state, lane, batch, event, subject_lc, envelope)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, state = excluded.state, event = excluded.event,
			subject_lc = excluded.subject_lc, envelope = excluded.envelope
		RETURNING rowid, t0, lane, batch`
	insertEnvSQL = `
		INSERT INTO messages (rowid, id, t0, seq, state, lane, batch, event, subject_lc, envelope)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING
		RETURNING rowid, t0, lane, batch`
	setLaneSQL    = `UPDATE messages SET lane = coalesce(lane, ?), batch = coalesce(batch, ?) WHERE rowid = ?`
	setSubjectSQL = `INSERT INTO subjects (t0, msg, subject_lc) VALUES (?, ?, ?)
		ON CONFLICT (t0, msg) DO UPDATE SET subject_lc = excluded.subject_lc`
	insRcptSQL    = `INSERT OR IGNORE INTO recipients (addr, t0, msg) VALUES (?, ?, ?)`
	delSubjectSQL = `DELETE FROM subjects WHERE t0 = ? AND msg = ?`
	oldEnvSQL     = `SELECT rowid, t0, envelope FROM messages WHERE id = ? AND envelope IS NOT NULL`
	delRcptSQL    = `DELETE FROM recipients WHERE addr = ? AND t0 = ? AND msg = ?`
	delMsgSQL     = `DELETE FROM messages WHERE rowid = ?`
)

// prepare prepares the writer's statements.
func (x *Index) prepare() error {
	s := &x.stmts
	for _, p := range []struct {
		to  **sql.Stmt
		sql string
	}{
		{&s.upsert, upsertSQL}, {&s.upsertEnv, upsertEnvSQL}, {&s.insertEnv, insertEnvSQL}, {&s.setLane, setLaneSQL}, {&s.setSubject, setSubjectSQL},
		{&s.insRcpt, insRcptSQL}, {&s.oldEnv, oldEnvSQL}, {&s.delRcpt, delRcptSQL}, {&s.delSubject, delSubjectSQL},
		{&s.delMsg, delMsgSQL},
	} {
		st, err := x.wdb.Prepare(p.sql)
		if err != nil {
			s.close()
			return fmt.Errorf("prepare: %w", err)
		}
		*p.to = st
	}
	return nil
}

// in returns the statements for use in tx (on the one connection they
// were prepared on, so they are not prepared again).
func (s *writeStmts) in(ctx context.Context, tx *sql.Tx) *writeStmts {
	return &writeStmts{
		upsert: tx.StmtContext(ctx, s.upsert), upsertEnv: tx.StmtContext(ctx, s.upsertEnv),
		insertEnv: tx.StmtContext(ctx, s.insertEnv),
		setLane:   tx.StmtContext(ctx, s.setLane), setSubject: tx.StmtContext(ctx, s.setSubject),
		insRcpt: tx.StmtContext(ctx, s.insRcpt), oldEnv: tx.StmtContext(ctx, s.oldEnv),
		delRcpt: tx.StmtContext(ctx, s.delRcpt), delSubject: tx.StmtContext(ctx, s.delSubject),
		delMsg: tx.StmtContext(ctx, s.delMsg),
	}
}

func (s *writeStmts) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.upsert, s.upsertEnv, s.insertEnv, s.setLane, s.setSubject, s.insRcpt, s.oldEnv, s.delRcpt, s.delSubject, s.delMsg} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
}

// deleteRecipients removes the recipient rows of the envelope env of the
// message (t0, rowid).
func deleteRecipients(ctx context.Context, del *sql.Stmt, env []byte, t0, rowid int64) error {
	var e envelopeFields
	if json.Unmarshal(env, &e) != nil {
		return nil // it was never indexed either
	}
	for _, a := range lowerSet(e.Recipients) {
		if _, err := del.ExecContext(ctx, a, t0, rowid); err != nil {
			return err
		}
	}
	return nil
}

// lowerSet returns the addresses in lower case, trimmed, without empty
// ones and duplicates.
func lowerSet(addrs []string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		a = strings.ToLower(strings.TrimSpace(a))
		if a != "" && !containsString(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// nullable is s, or NULL when s is empty.
func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// setMeta stores one meta value.
func setMeta(ctx context.Context, tx *sql.Tx, key, value string) error {
	if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	return nil
}

// streamID is how the index tells one stream from another of the same
// name: its creation time.
func streamID(created time.Time) string { return created.UTC().Format(time.RFC3339Nano) }

// reconcile compares the stream with what the index holds: an index of
// another stream (or of more events than the stream has) is emptied; one
// that is behind the stream's first event drops what the stream no longer
// has and skips ahead.
func (x *Index) reconcile(ctx context.Context, info *jetstream.StreamInfo) error {
	id := streamID(info.Created)
	seq := x.Seq()
	if (x.created != "" && x.created != id) || info.State.LastSeq < seq {
		x.log.Warn("search index: the result stream is not the one indexed; rebuilding the index from it",
			"stream", info.Config.Name, "indexed_seq", seq, "stream_last_seq", info.State.LastSeq)
		if err := x.reset(ctx, id); err != nil {
			return err
		}
		seq = 0
	} else if x.created == "" {
		if err := x.storeMeta(ctx, metaCreated, id); err != nil {
			return err
		}
		x.created = id
	}
	// What the stream no longer has leaves the index (after a purge
	// too), and a gap is skipped.
	first := info.State.FirstSeq
	if _, err := x.prune(ctx, first); err != nil {
		return err
	}
	if first > seq+1 {
		if seq > 0 {
			x.log.Warn("search index: result events left the stream before they were indexed; skipping ahead",
				"stream", info.Config.Name, "indexed_seq", seq, "stream_first_seq", first)
		}
		if err := x.storeMeta(ctx, metaSeq, strconv.FormatUint(first-1, 10)); err != nil {
			return err
		}
		x.setSeq(first - 1)
	}
	return nil
}

// reset empties the index, for the stream with the given id.
func (x *Index) reset(ctx context.Context, id string) error {
	tx, err := x.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, q := range []string{`DELETE FROM messages`, `DELETE FROM recipients`, `DELETE FROM subjects`} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("empty the index: %w", err)
		}
	}
	if err := setMeta(ctx, tx, metaSeq, "0"); err != nil {
		return err
	}
	if err := setMeta(ctx, tx, metaCreated, id); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	x.created = id
	x.setSeq(0)
	return nil
}

// storeMeta stores one meta value in a transaction of its own.
func (x *Index) storeMeta(ctx context.Context, key, value string) error {
	tx, err := x.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := setMeta(ctx, tx, key, value); err != nil {
		return err
	}
	return tx.Commit()
}

// pruneLoop drops, every pruneEvery, the messages whose events have all
// left the stream, and notices when the stream is replaced.
func (x *Index) pruneLoop(ctx context.Context, stream jetstream.Stream, created time.Time) error {
	t := time.NewTicker(x.pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
		info, err := stream.Info(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("result stream info: %w", err)
		}
		if !info.Created.Equal(created) || info.State.LastSeq < x.Seq() {
			return errStreamChanged
		}
		if err := x.maintain(ctx, info.State.FirstSeq); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// maintain drops the messages whose events have all left the stream
// (first is the stream's first sequence) and refreshes the planner's
// statistics.
func (x *Index) maintain(ctx context.Context, first uint64) error {
	began := time.Now()
	n, err := x.prune(ctx, first)
	if err != nil {
		return err
	}
	if n > 0 {
		x.log.Info("search index: dropped messages whose events left the result stream",
			"messages", n, "stream_first_seq", first)
	}
	pruned := time.Since(began)
	// Statistics for the planner, from a sample (analysis_limit), so that
	// this holds the writer for milliseconds, not seconds.
	if _, err := x.wdb.ExecContext(ctx, `PRAGMA optimize`); err != nil && ctx.Err() == nil {
		x.log.Warn("search index: PRAGMA optimize failed", "error", err)
	}
	if d := time.Since(began); d > time.Second {
		x.log.Warn("search index: maintenance held the writer", "duration", d, "prune", pruned, "messages_pruned", n)
	}
	return nil
}

// pruneChunk is how many messages one prune transaction drops at most, so
// that the writer never waits long.
const pruneChunk = 2000

// prune drops every message whose latest event is before first (and so
// has no event left in the stream), in transactions of pruneChunk
// messages, and returns how many it dropped.
func (x *Index) prune(ctx context.Context, first uint64) (int, error) {
	total := 0
	for {
		n, err := x.pruneOnce(ctx, first)
		total += n
		if err != nil || n < pruneChunk {
			return total, err
		}
	}
}

func (x *Index) pruneOnce(ctx context.Context, first uint64) (int, error) {
	tx, err := x.wdb.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	// A message whose latest event has left the stream has its first event
	// before first too: the rowid range finds it without an index on seq.
	rows, err := tx.QueryContext(ctx, `SELECT rowid, t0, envelope FROM messages WHERE rowid < ?1 AND seq < ?1 LIMIT ?2`, int64(first), pruneChunk)
	if err != nil {
		return 0, fmt.Errorf("prune: %w", err)
	}
	type victim struct {
		rowid, t0 int64
		env       []byte
	}
	var vs []victim
	for rows.Next() {
		var v victim
		if err := rows.Scan(&v.rowid, &v.t0, &v.env); err != nil {
			rows.Close()
			return 0, fmt.Errorf("prune: %w", err)
		}
		vs = append(vs, v)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return 0, fmt.Errorf("prune: %w", err)
	}
	if len(vs) == 0 {
		return 0, nil
	}
	st := x.stmts.in(ctx, tx)
	defer st.close()
	for _, v := range vs {
		if v.env != nil {
			if err := deleteRecipients(ctx, st.delRcpt, v.env, v.t0, v.rowid); err != nil {
				return 0, fmt.Errorf("prune: %w", err)
			}
			if _, err := st.delSubject.ExecContext(ctx, v.t0, v.rowid); err != nil {
				return 0, fmt.Errorf("prune: %w", err)
			}
		}
		if _, err := st.delMsg.ExecContext(ctx, v.rowid); err != nil {
			return 0, fmt.Errorf("prune: %w", err)
		}
	}
	return len(vs), tx.Commit()
}
