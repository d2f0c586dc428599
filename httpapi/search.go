package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/search"
)

// SearchPage is the answer of GET /v1/messages: one page of the messages
// a search selects, newest first.
type SearchPage struct {
	// Messages are the latest result events of the messages, as stored
	// (contract §3); an empty list when nothing matches.
	Messages []json.RawMessage `json:"Messages"`
	// Envelopes are the envelopes (From, Recipients, Subject) of the
	// messages of Messages that have one, by Id, from their accepted or
	// scheduled event: the latest event of a sent message has none.
	Envelopes map[string]json.RawMessage `json:"Envelopes,omitempty"`
	// Next is the cursor of the next page, for the cursor parameter;
	// absent on the last page.
	Next string `json:"Next,omitempty"`
}

// searchParams are the query parameters of GET /v1/messages.
var searchParams = []string{"recipient", "subject", "state", "lane", "batch", "since", "until", "limit", "cursor"}

// registerSearch mounts GET /v1/messages (search) and
// GET /v1/messages/{id}/events on mux.
func (a *API) registerSearch(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/messages", a.authorized(a.searchMessages))
	mux.HandleFunc("GET /v1/messages/{id}/events", a.authorized(a.events))
}

// searchMessages answers a search of the index: 503 without one, 400 for
// a bad parameter.
func (a *API) searchMessages(rw http.ResponseWriter, r *http.Request) {
	if a.search == nil {
		a.fail(rw, r, http.StatusServiceUnavailable, "search is not enabled on this instance: it runs without a search index (see --index-dir)", nil)
		return
	}
	q, err := searchQuery(r.URL.Query())
	if err != nil {
		a.fail(rw, r, http.StatusBadRequest, err.Error(), nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	began := time.Now()
	page, err := a.search.Search(ctx, q)
	var qe *search.QueryError
	switch {
	case errors.As(err, &qe):
		a.fail(rw, r, http.StatusBadRequest, "bad parameter "+qe.Field+": "+qe.Reason, nil)
		return
	case err != nil:
		a.log.ErrorContext(r.Context(), "http api: search failed", "error", err)
		a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	a.log.DebugContext(r.Context(), "http api: search", "messages", len(page.Messages), "duration", time.Since(began), "next", page.Next != "")
	ans := SearchPage{Messages: page.Messages, Envelopes: page.Envelopes, Next: page.Next}
	if ans.Messages == nil {
		ans.Messages = []json.RawMessage{}
	}
	// Without HTML escaping, so that compact stored events are answered
	// byte for byte.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ans); err != nil {
		a.fail(rw, r, http.StatusInternalServerError, "cannot encode the answer: "+err.Error(), nil)
		return
	}
	setJSONHeaders(rw)
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write(buf.Bytes())
}

// searchQuery reads the query parameters of a search; an error names the
// parameter.
func searchQuery(v url.Values) (search.Query, error) {
	var q search.Query
	for k, vs := range v {
		known := false
		for _, p := range searchParams {
			known = known || k == p
		}
		switch {
		case !known:
			return q, fmt.Errorf("unknown parameter %q: want %s", k, strings.Join(searchParams, ", "))
		case len(vs) > 1:
			return q, fmt.Errorf("bad parameter %s: given %d times, want once", k, len(vs))
		}
	}
	q.Recipient, q.Subject, q.State = v.Get("recipient"), v.Get("subject"), v.Get("state")
	q.Lane, q.Batch, q.Cursor = v.Get("lane"), v.Get("batch"), v.Get("cursor")
	for _, t := range []struct {
		name string
		to   *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		s := v.Get(t.name)
		if s == "" {
			continue
		}
		// A + of an offset that was not percent-encoded arrives as a space.
		tm, err := time.Parse(time.RFC3339Nano, strings.ReplaceAll(s, " ", "+"))
		if err != nil {
			return q, fmt.Errorf("bad parameter %s: want an RFC 3339 time such as 2026-05-04T12:00:00Z, got %q", t.name, s)
		}
		*t.to = tm
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > search.MaxLimit {
			return q, fmt.Errorf("bad parameter limit: want 1 to %d, got %q", search.MaxLimit, s)
		}
		q.Limit = n
	}
	return q, nil
}

// events answers every stored event of an Id, oldest first.
func (a *API) events(rw http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !schema.ValidID(id) {
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	evs, err := a.producer.Events(ctx, id)
	switch {
	case errors.Is(err, producer.ErrNotFound):
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
		return
	case err != nil:
		a.log.ErrorContext(r.Context(), "http api: events look-up failed", "id", id, "error", err)
		a.fail(rw, r, http.StatusInternalServerError, "events of "+id+": "+err.Error(), nil)
		return
	}
	// The answer is the events themselves, as GET /v1/messages/{Id} is
	// the latest one (contract §6).
	writeJSON(rw, http.StatusOK, evs)
}
