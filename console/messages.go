package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
)

// pageSize is the messages of one page of the search.
const pageSize = 50

// messagesData is what the messages page shows.
type messagesData struct {
	// Q, State and Lane are the search as given.
	Q, State, Lane string
	// Field says what Q was taken as: recipient, subject or batch; empty
	// for no text.
	Field string
	// Value is the text searched for in Field.
	Value string
	// Rows are the page's messages, newest first.
	Rows []messageRow
	// NextURL is the link to the next page; empty on the last one.
	NextURL string
	// FirstURL is the link to the first page, when this is not it.
	FirstURL string
	// SearchOff says that this instance has no search index.
	SearchOff bool
	// Error says what is wrong with the search, or what failed.
	Error string
	// States and Lanes are the filters' choices.
	States []schema.State
	Lanes  []schema.Lane
}

// messageRow is one message of the search.
type messageRow struct {
	Id, Batch, Subject, To string
	State                  schema.State
	Status                 schema.Status
	Lane                   schema.Lane
	// More is how many recipients beyond To it has.
	More    int
	Attempt int
	Time    time.Time
}

var (
	searchStates = []schema.State{schema.StateScheduled, schema.StateAccepted, schema.StateDeferred,
		schema.StateSent, schema.StateFailed, schema.StateCancelled}
	searchLanes = []schema.Lane{schema.LaneUrgent, schema.LaneNormal, schema.LaneBulk}
)

// interpret says what the one search box's text q means: "id:", "batch:",
// "subject:" and "to:" (or "recipient:") name the field; else an address
// searches the recipients, a word that is a valid Id may be one (or else
// a BatchId, or else a subject: field "id?", which messagesPage resolves),
// and anything else is a part of the subject.
func interpret(q string) (field, value string) {
	q = strings.TrimSpace(q)
	if q == "" {
		return "", ""
	}
	if k, v, ok := strings.Cut(q, ":"); ok {
		v = strings.TrimSpace(v)
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "id":
			return "id", v
		case "batch":
			return "batch", v
		case "subject":
			return "subject", v
		case "to", "recipient":
			return "recipient", v
		}
	}
	if strings.Contains(q, "@") && !strings.ContainsAny(q, " \t") {
		return "recipient", q
	}
	if schema.ValidID(q) {
		return "id?", q
	}
	return "subject", q
}

// messagesPage is /ui/messages: the search.
func (c *Console) messagesPage(rw http.ResponseWriter, r *http.Request, s *session) {
	qv := r.URL.Query()
	d := messagesData{Q: qv.Get("q"), State: qv.Get("state"), Lane: qv.Get("lane"),
		States: searchStates, Lanes: searchLanes, SearchOff: c.search == nil}
	cursor := qv.Get("cursor")
	ctx, cancel := reqCtx(r)
	defer cancel()

	field, value := interpret(d.Q)
	if (field == "id" || field == "id?") && cursor == "" {
		_, err := c.producer.Status(ctx, value)
		switch {
		case err == nil:
			http.Redirect(rw, r, "/ui/messages/"+url.PathEscape(value), http.StatusSeeOther)
			return
		case field == "id" && (errors.Is(err, producer.ErrNotFound) || errors.Is(err, producer.ErrInvalidID)):
			d.Error = "No message has the Id " + value + "."
			c.render(rw, r, s, http.StatusOK, "messages", "Messages", "messages", d)
			return
		case field == "id":
			d.Error = problem("looking up "+value, err)
			c.render(rw, r, s, http.StatusOK, "messages", "Messages", "messages", d)
			return
		case !errors.Is(err, producer.ErrNotFound):
			c.log.WarnContext(r.Context(), "console: Id look-up failed", "id", value, "error", err)
		}
	}
	if field == "id?" {
		// Not the Id of a message: the BatchId of some, or else a word of
		// the subject. Resolved again on every page (a page after the first
		// skips the Id look-up), so that the pages of one search agree.
		field = c.batchOrSubject(ctx, r, value)
	}
	d.Field, d.Value = field, value
	if c.search == nil {
		c.render(rw, r, s, http.StatusOK, "messages", "Messages", "messages", d)
		return
	}
	q := search.Query{State: d.State, Lane: d.Lane, Cursor: cursor, Limit: pageSize}
	switch field {
	case "recipient":
		q.Recipient = value
	case "subject":
		q.Subject = value
	case "batch":
		q.Batch = value
	}
	page, err := c.search.Search(ctx, q)
	var qe *search.QueryError
	switch {
	case errors.As(err, &qe):
		d.Error = "The search cannot run: " + qe.Field + ": " + qe.Reason + "."
	case err != nil:
		c.log.ErrorContext(r.Context(), "console: search failed", "error", err)
		d.Error = problem("the search", err)
	}
	for _, raw := range page.Messages {
		var ev schema.Result
		if json.Unmarshal(raw, &ev) != nil {
			continue
		}
		row := messageRow{Id: ev.Id, Batch: ev.BatchId, State: ev.State, Status: ev.Status, Lane: ev.Lane,
			Attempt: ev.Attempt, Time: ev.Time}
		var env schema.Envelope
		if e, ok := page.Envelopes[ev.Id]; ok && json.Unmarshal(e, &env) == nil {
			row.Subject = env.Subject
			if len(env.Recipients) > 0 {
				row.To, row.More = env.Recipients[0], len(env.Recipients)-1
			}
		}
		d.Rows = append(d.Rows, row)
	}
	if page.Next != "" {
		next := url.Values{"cursor": {page.Next}}
		for _, k := range []string{"q", "state", "lane"} {
			if v := qv.Get(k); v != "" {
				next.Set(k, v)
			}
		}
		d.NextURL = "/ui/messages?" + next.Encode()
	}
	if cursor != "" {
		first := url.Values{}
		for _, k := range []string{"q", "state", "lane"} {
			if v := qv.Get(k); v != "" {
				first.Set(k, v)
			}
		}
		d.FirstURL = "/ui/messages?" + first.Encode()
	}
	c.render(rw, r, s, http.StatusOK, "messages", "Messages", "messages", d)
}

// batchOrSubject says how to search for a bare word that is not the Id of
// a message: "batch" when some message, in any state or lane, has it as
// its BatchId, else "subject". Without an index, or when the look-up
// fails, it is a subject, as before batches were looked for.
func (c *Console) batchOrSubject(ctx context.Context, r *http.Request, word string) string {
	if c.search == nil {
		return "subject"
	}
	page, err := c.search.Search(ctx, search.Query{Batch: word, Limit: 1})
	if err != nil {
		c.log.WarnContext(r.Context(), "console: batch look-up failed", "batch", word, "error", err)
		return "subject"
	}
	if len(page.Messages) > 0 {
		return "batch"
	}
	return "subject"
}

// messageData is what the page of one message shows.
type messageData struct {
	Id string
	// Events are the message's events, oldest first; Latest is the last.
	Events []*schema.Result
	Latest *schema.Result
	// Envelope is that of the latest event that has one.
	Envelope *schema.Envelope
	// CanCancel says whether the message may still be cancelled.
	CanCancel bool
	// Dead is the message's dead letter, if it has one.
	Dead *producer.DeadLetter
	// Raw is the latest event as JSON, indented.
	Raw string
	// Problem says what could not be read.
	Problem string
}

// loadMessage reads what the page of message id shows; found is false for
// an Id without events.
func (c *Console) loadMessage(ctx context.Context, id string) (d messageData, found bool, err error) {
	d.Id = id
	evs, err := c.producer.Events(ctx, id)
	if errors.Is(err, producer.ErrNotFound) || errors.Is(err, producer.ErrInvalidID) {
		return d, false, nil
	}
	if err != nil {
		return d, false, err
	}
	d.Events, d.Latest = evs, evs[len(evs)-1]
	for _, ev := range evs {
		if ev.Envelope != nil {
			d.Envelope = ev.Envelope
		}
	}
	switch d.Latest.State {
	case schema.StateScheduled, schema.StateAccepted, schema.StateDeferred:
		d.CanCancel = true
	}
	if d.Latest.State == schema.StateFailed {
		dl, err := c.producer.DeadLetterOf(ctx, id)
		switch {
		case err == nil:
			d.Dead = dl
		case !errors.Is(err, producer.ErrNotFound):
			d.Problem = problem("its dead letter", err)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // the template escapes
	_ = enc.Encode(d.Latest)
	d.Raw = buf.String()
	return d, true, nil
}

// messagePage is /ui/messages/{id}.
func (c *Console) messagePage(rw http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	ctx, cancel := reqCtx(r)
	defer cancel()
	d, found, err := c.loadMessage(ctx, id)
	switch {
	case err != nil:
		c.log.ErrorContext(r.Context(), "console: message look-up failed", "id", id, "error", err)
		c.fail(rw, r, s, http.StatusInternalServerError, problem("The events of "+id, err))
	case !found:
		c.fail(rw, r, s, http.StatusNotFound, "No message has the Id "+id+" (or its events have expired from the result stream).")
	default:
		c.renderWith(rw, r, s, http.StatusOK, "message", view{Title: id + " · Messages", Heading: "Message", Nav: "messages", Data: d})
	}
}

// messageLive is the live part of a message's page, which the script
// refreshes until the message is final.
func (c *Console) messageLive(rw http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	ctx, cancel := reqCtx(r)
	defer cancel()
	d, found, err := c.loadMessage(ctx, id)
	switch {
	case err != nil:
		http.Error(rw, err.Error(), http.StatusInternalServerError)
	case !found:
		http.Error(rw, "unknown Id", http.StatusNotFound)
	default:
		c.fragment(rw, "message", "message-live", s, d)
	}
}

// cancelWait bounds a cancellation: the producer waits up to the SMTP
// timeout for a worker that may be sending the message.
const cancelWait = 45 * time.Second

// cancel cancels one message and shows the outcome on its page.
func (c *Console) cancel(rw http.ResponseWriter, r *http.Request, _ *session) {
	id := r.PathValue("id")
	back := "/ui/messages/" + url.PathEscape(id)
	ctx, cancel := context.WithTimeout(r.Context(), cancelWait)
	defer cancel()
	res, err := c.producer.Cancel(ctx, id)
	if err != nil {
		c.log.ErrorContext(r.Context(), "console: cancel failed", "id", id, "error", err)
		c.redirect(rw, r, back, "error", problem("Cancelling "+id, err))
		return
	}
	c.log.InfoContext(r.Context(), "console: cancel", "id", id, "outcome", res.String())
	switch res.Outcome {
	case producer.Cancelled:
		if c.cancelled != nil {
			c.cancelled.Inc()
		}
		c.redirect(rw, r, back, "ok", "Cancelled: "+id+" will not be sent.")
	case producer.AlreadyCancelled:
		c.redirect(rw, r, back, "ok", id+" was already cancelled.")
	case producer.Unknown:
		c.redirect(rw, r, back, "error", "Unknown Id "+id+": nothing was cancelled.")
	case producer.TooLateSending:
		c.redirect(rw, r, back, "warn", "Too late to cancel "+id+": a worker has begun sending it.")
	default:
		state := "final"
		if res.Event != nil {
			state = string(res.Event.State)
		}
		c.redirect(rw, r, back, "warn", "Too late to cancel "+id+": it is already "+state+".")
	}
}
