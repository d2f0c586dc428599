package search

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetmail/jetmail/schema"
)

// The page sizes of Query.Limit.
const (
	// DefaultLimit is the number of messages of a page when Query.Limit is
	// zero.
	DefaultLimit = 50
	// MaxLimit is the largest Query.Limit.
	MaxLimit = 500
)

// ErrBadQuery is wrapped by the error of Search for a query it can not
// run: an unknown state or lane, an invalid batch Id, a limit out of range,
// Until not after Since, or a cursor that Search did not make. The error
// is a *QueryError that names the field. Test for it with errors.Is.
var ErrBadQuery = errors.New("search: bad query")

// A QueryError is an invalid field of a Query. It wraps ErrBadQuery.
type QueryError struct {
	// Field is the query parameter, in lower case as GET /v1/messages
	// names it: recipient, subject, state, lane, batch, since, until,
	// limit or cursor.
	Field string
	// Reason says what is wrong with it.
	Reason string
}

func (e *QueryError) Error() string { return "search: bad query: " + e.Field + ": " + e.Reason }

// Unwrap returns ErrBadQuery.
func (e *QueryError) Unwrap() error { return ErrBadQuery }

func badQuery(field, format string, args ...any) error {
	return &QueryError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// A Query selects messages. Its zero value selects every message in the
// index, newest first, 50 at a time. Filters combine with AND.
type Query struct {
	// Recipient is an address that one of the message's recipients (To,
	// CC or Bcc) must be, in any case. Surrounding spaces are ignored.
	Recipient string
	// Subject is text that the message's subject must contain, in any
	// case.
	Subject string
	// State is the state the message's latest event must have: scheduled,
	// accepted, deferred, sent, failed or cancelled (any case).
	State string
	// Lane is the lane of the message: urgent, normal or bulk (any case).
	Lane string
	// Batch is the BatchId of the message.
	Batch string
	// Since, when not zero, keeps the messages whose first event is at or
	// after it; Until, when not zero, those whose first event is before it.
	Since, Until time.Time
	// Limit is the most messages of the page: DefaultLimit when zero, at
	// most MaxLimit.
	Limit int
	// Cursor is a Page's Next, to get the page after it; empty for the
	// first page. The other fields should be those of the first page.
	Cursor string
}

// A Page is one page of the messages a Query selects, newest first.
type Page struct {
	// Messages are the latest events of the messages, byte for byte as
	// the result stream stored them (contract §3), newest message first:
	// by the time of the message's first event, then by its stream
	// sequence.
	Messages []json.RawMessage
	// Envelopes are the envelopes (contract §3: From, Recipients and
	// Subject, byte for byte as in the message's latest accepted or
	// scheduled event) of the messages of Messages that have one, by Id:
	// the latest event of a message that has been sent has none of its
	// own.
	Envelopes map[string]json.RawMessage
	// Next is the cursor of the page after this one, for Query.Cursor;
	// empty on the last page.
	Next string
}

// cursor is the sort key of a message: the time of its first event and
// that event's stream sequence (the row's rowid).
type cursor struct {
	t0, rowid int64
}

const cursorVersion = 1

func (c cursor) String() string {
	b := make([]byte, 1, 1+2*binary.MaxVarintLen64)
	b[0] = cursorVersion
	b = binary.AppendVarint(b, c.t0)
	b = binary.AppendUvarint(b, uint64(c.rowid))
	return base64.RawURLEncoding.EncodeToString(b)
}

func parseCursor(s string) (cursor, error) {
	bad := badQuery("cursor", "not a cursor of this index: use the Next of a page as it is")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 3 || b[0] != cursorVersion {
		return cursor{}, bad
	}
	b = b[1:]
	t0, n := binary.Varint(b)
	if n <= 0 {
		return cursor{}, bad
	}
	b = b[n:]
	rowid, n := binary.Uvarint(b)
	if n <= 0 || n != len(b) || rowid > 1<<63-1 {
		return cursor{}, bad
	}
	return cursor{t0: t0, rowid: int64(rowid)}, nil
}

// normalize checks q and returns it with its filters normalized (lower
// case, trimmed) and its limit set.
func (q Query) normalize() (Query, *cursor, error) {
	q.Recipient = strings.ToLower(strings.TrimSpace(q.Recipient))
	q.Subject = strings.ToLower(q.Subject)
	if q.State != "" {
		s := schema.State(strings.ToLower(q.State))
		switch s {
		case schema.StateScheduled, schema.StateAccepted, schema.StateDeferred,
			schema.StateSent, schema.StateFailed, schema.StateCancelled:
			q.State = string(s)
		default:
			return q, nil, badQuery("state", "want scheduled, accepted, deferred, sent, failed or cancelled, got %q", q.State)
		}
	}
	if q.Lane != "" {
		l, err := schema.ParseLane(q.Lane)
		if err != nil {
			return q, nil, badQuery("lane", "%v", err)
		}
		q.Lane = string(l)
	}
	if q.Batch != "" && !schema.ValidID(q.Batch) {
		return q, nil, badQuery("batch", "want [A-Za-z0-9_-]{1,128}, got %q", q.Batch)
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return q, nil, badQuery("until", "%s is not after since %s", q.Until.Format(time.RFC3339Nano), q.Since.Format(time.RFC3339Nano))
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultLimit
	case q.Limit < 0 || q.Limit > MaxLimit:
		return q, nil, badQuery("limit", "want 1 to %d, got %d", MaxLimit, q.Limit)
	}
	if q.Cursor == "" {
		return q, nil, nil
	}
	c, err := parseCursor(q.Cursor)
	if err != nil {
		return q, nil, err
	}
	return q, &c, nil
}

// Search returns the page of messages that q selects. It reads what the
// index holds, which lags the stream by the events Run has not written
// yet (milliseconds, unless Run is catching up). An invalid q is an error
// wrapping ErrBadQuery (a *QueryError).
func (x *Index) Search(ctx context.Context, q Query) (Page, error) {
	q, cur, err := q.normalize()
	if err != nil {
		return Page{}, err
	}
	stmt, args := q.sql(cur)
	rows, err := x.rdb.QueryContext(ctx, stmt, args...)
	if err != nil {
		return Page{}, fmt.Errorf("search: %w", err)
	}
	defer rows.Close()
	var p Page
	var lastKey cursor
	for rows.Next() {
		if len(p.Messages) == q.Limit {
			p.Next = lastKey.String()
			break
		}
		var id string
		var event, env []byte
		if err := rows.Scan(&lastKey.rowid, &lastKey.t0, &id, &event, &env); err != nil {
			return Page{}, fmt.Errorf("search: %w", err)
		}
		p.Messages = append(p.Messages, event)
		if env != nil {
			if p.Envelopes == nil {
				p.Envelopes = map[string]json.RawMessage{}
			}
			p.Envelopes[id] = env
		}
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("search: %w", err)
	}
	return p, nil
}

// sql is the statement of a normalized query and its arguments.
func (q Query) sql(cur *cursor) (string, []any) {
	// With a recipient, the recipients table gives the messages in order;
	// with a subject (and no batch, which its index finds faster), the
	// subjects table; otherwise an index of messages (the planner picks
	// one for the filters). CROSS JOIN keeps the first table the outer
	// loop.
	from, key := "messages m", [2]string{"m.t0", "m.rowid"}
	var where []string
	var args []any
	switch {
	case q.Recipient != "":
		from, key = "recipients r CROSS JOIN messages m ON m.rowid = r.msg", [2]string{"r.t0", "r.msg"}
		where, args = append(where, "r.addr = ?"), append(args, q.Recipient)
	case q.Subject != "" && q.Batch == "":
		from, key = "subjects s CROSS JOIN messages m ON m.rowid = s.msg", [2]string{"s.t0", "s.msg"}
		where, args = append(where, "instr(s.subject_lc, ?) > 0"), append(args, q.Subject)
		q.Subject = "" // done
	}
	for _, f := range []struct{ col, v string }{{"m.state", q.State}, {"m.lane", q.Lane}, {"m.batch", q.Batch}} {
		if f.v != "" {
			where, args = append(where, f.col+" = ?"), append(args, f.v)
		}
	}
	if q.Subject != "" {
		where, args = append(where, "instr(m.subject_lc, ?) > 0"), append(args, q.Subject)
	}
	if !q.Since.IsZero() {
		where, args = append(where, key[0]+" >= ?"), append(args, q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		where, args = append(where, key[0]+" < ?"), append(args, q.Until.UnixNano())
	}
	if cur != nil {
		where, args = append(where, "("+key[0]+", "+key[1]+") < (?, ?)"), append(args, cur.t0, cur.rowid)
	}
	stmt := "SELECT m.rowid, m.t0, m.id, m.event, m.envelope FROM " + from
	if len(where) > 0 {
		stmt += " WHERE " + strings.Join(where, " AND ")
	}
	stmt += " ORDER BY " + key[0] + " DESC, " + key[1] + " DESC LIMIT ?"
	return stmt, append(args, q.Limit+1)
}

// explain returns SQLite's query plan of q, for tests.
func (x *Index) explain(ctx context.Context, q Query) (string, error) {
	q, cur, err := q.normalize()
	if err != nil {
		return "", err
	}
	stmt, args := q.sql(cur)
	rows, err := x.rdb.QueryContext(ctx, "EXPLAIN QUERY PLAN "+stmt, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			return "", err
		}
		out = append(out, detail)
	}
	return strings.Join(out, "\n"), rows.Err()
}
