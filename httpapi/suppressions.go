package httpapi

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/jetmail/jetmail/internal/ratelimit"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/suppress"
)

// suppressAPI is what the suppression list's routes (this file) and the
// one-click unsubscribe's (unsubscribe.go) need.
type suppressAPI struct {
	store   *suppress.Store
	tokens  *suppress.Tokens
	limiter *ratelimit.PerClient
}

func (s *suppressAPI) init(cfg Config) error {
	s.store, s.tokens = cfg.Suppressions, cfg.Unsubscribe
	if s.tokens == nil {
		return nil
	}
	if s.store == nil {
		return errors.New("httpapi config: Unsubscribe needs Suppressions")
	}
	limit, burst := cfg.UnsubscribeLimit, cfg.UnsubscribeBurst
	if limit <= 0 {
		limit = 5
	}
	if burst <= 0 {
		burst = 50
	}
	s.limiter = ratelimit.New(limit, burst)
	return nil
}

// SuppressionList is the answer of GET /v1/suppressions: a page of
// entries, in the order of their addresses.
type SuppressionList struct {
	// Suppressions are the entries of the page; empty, never null, when
	// none.
	Suppressions []suppress.Entry `json:"Suppressions"`
	// Next is the cursor of the next page, absent on the last.
	Next string `json:"Next,omitempty"`
}

// Limits of GET /v1/suppressions.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

func (a *API) registerSuppressions(mux *http.ServeMux) {
	if a.sup.store == nil {
		return
	}
	mux.HandleFunc("GET /v1/suppressions", a.authorized(a.listSuppressions))
	mux.HandleFunc("GET /v1/suppressions/{address}", a.authorized(a.getSuppression))
	mux.HandleFunc("PUT /v1/suppressions/{address}", a.authorized(a.putSuppression))
	mux.HandleFunc("DELETE /v1/suppressions/{address}", a.authorized(a.deleteSuppression))
}

// listSuppressions answers a page of the list, filtered by q (a part of the
// address, in any case) and reason, after cursor (the last address of the
// page before, base64url).
func (a *API) listSuppressions(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := defaultListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			a.fail(rw, r, http.StatusBadRequest, fmt.Sprintf("limit must be a number from 1 to %d, got %q", maxListLimit, v), nil)
			return
		}
		limit = n
	}
	var reason suppress.Reason
	if v := q.Get("reason"); v != "" {
		var err error
		if reason, err = suppress.ParseReason(v); err != nil {
			a.fail(rw, r, http.StatusBadRequest, "reason: want bounce, unsubscribe or manual, got "+strconv.Quote(v), nil)
			return
		}
	}
	after := ""
	if v := q.Get("cursor"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || len(b) == 0 {
			a.fail(rw, r, http.StatusBadRequest, "cursor is not one that a page answered", nil)
			return
		}
		after = string(b)
	}
	search := strings.ToLower(q.Get("q"))

	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	page := SuppressionList{Suppressions: []suppress.Entry{}}
	for e, err := range a.sup.store.List(ctx) {
		if errors.Is(err, suppress.ErrMalformed) {
			a.log.WarnContext(r.Context(), "http api: suppression entry skipped", "error", err)
			continue
		}
		if err != nil {
			a.storeFailed(rw, r, "list", err)
			return
		}
		if e.Address > after && (reason == "" || e.Reason == reason) && strings.Contains(e.Address, search) {
			page.Suppressions = append(page.Suppressions, e)
		}
	}
	slices.SortFunc(page.Suppressions, func(x, y suppress.Entry) int { return cmp.Compare(x.Address, y.Address) })
	if len(page.Suppressions) > limit {
		page.Suppressions = page.Suppressions[:limit]
		page.Next = base64.RawURLEncoding.EncodeToString([]byte(page.Suppressions[limit-1].Address))
	}
	writeJSON(rw, http.StatusOK, page)
}

// suppressionAddress is the canonical {address} of the path, or false
// after answering 400.
func (a *API) suppressionAddress(rw http.ResponseWriter, r *http.Request) (string, bool) {
	raw := r.PathValue("address")
	addr, err := suppress.Canonical(raw)
	if err != nil {
		a.fail(rw, r, http.StatusBadRequest, fmt.Sprintf("%q is not a valid email address or @domain", raw), nil)
		return "", false
	}
	return addr, true
}

// getSuppression answers the entry of exactly one address or @domain.
func (a *API) getSuppression(rw http.ResponseWriter, r *http.Request) {
	addr, ok := a.suppressionAddress(rw, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	e, err := a.sup.store.Get(ctx, addr)
	switch {
	case errors.Is(err, suppress.ErrNotFound):
		a.fail(rw, r, http.StatusNotFound, addr+" is not on the suppression list", nil)
	case err != nil:
		a.storeFailed(rw, r, "get", err)
	default:
		writeJSON(rw, http.StatusOK, e)
	}
}

// suppressionBody is the body of PUT /v1/suppressions/{address}.
type suppressionBody struct {
	Reason string `json:"Reason"`
	Id     string `json:"Id"`
}

// putSuppression adds an entry: 201 when the address had none, 200 when
// it replaced one or had one of the same reason already, 409 when a
// stronger one stays.
func (a *API) putSuppression(rw http.ResponseWriter, r *http.Request) {
	addr, ok := a.suppressionAddress(rw, r)
	if !ok {
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, 4096))
	var body suppressionBody
	if err == nil {
		d := json.NewDecoder(bytes.NewReader(data))
		d.DisallowUnknownFields()
		err = d.Decode(&body)
		if err == nil && d.More() {
			err = errors.New("more than one JSON value")
		}
	}
	if err != nil {
		a.fail(rw, r, http.StatusBadRequest, `want a body {"Reason": "bounce", "unsubscribe" or "manual"} with an optional "Id": `+err.Error(), nil)
		return
	}
	reason, err := suppress.ParseReason(body.Reason)
	if err != nil {
		a.fail(rw, r, http.StatusBadRequest, "Reason: want bounce, unsubscribe or manual, got "+strconv.Quote(body.Reason), nil)
		return
	}
	if body.Id != "" && !schema.ValidID(body.Id) {
		a.fail(rw, r, http.StatusBadRequest, "Id: must match [A-Za-z0-9_-]{1,128}, got "+strconv.Quote(body.Id), nil)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	ch, err := a.sup.store.Add(ctx, suppress.Entry{Address: addr, Reason: reason, Id: body.Id}, 0)
	switch {
	case err != nil:
		a.storeFailed(rw, r, "add", err)
	case ch.Stored && ch.Previous == nil:
		rw.Header().Set("Location", "/v1/suppressions/"+url.PathEscape(addr))
		writeJSON(rw, http.StatusCreated, ch.Entry)
	case ch.Stored || ch.Entry.Reason == reason:
		writeJSON(rw, http.StatusOK, ch.Entry)
	default:
		a.fail(rw, r, http.StatusConflict, fmt.Sprintf("%s is suppressed with reason %s, which %s does not replace; DELETE it first",
			addr, ch.Entry.Reason, reason), nil)
	}
}

// deleteSuppression removes the entry of exactly one address or @domain,
// and answers it.
func (a *API) deleteSuppression(rw http.ResponseWriter, r *http.Request) {
	addr, ok := a.suppressionAddress(rw, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	e, err := a.sup.store.Remove(ctx, addr)
	switch {
	case errors.Is(err, suppress.ErrNotFound):
		a.fail(rw, r, http.StatusNotFound, addr+" is not on the suppression list", nil)
	case err != nil:
		a.storeFailed(rw, r, "remove", err)
	default:
		a.log.InfoContext(r.Context(), "http api: suppression removed", "address", addr, "reason", e.Reason)
		writeJSON(rw, http.StatusOK, e)
	}
}

// storeFailed answers 500 for a failure of the suppression list's bucket.
func (a *API) storeFailed(rw http.ResponseWriter, r *http.Request, op string, err error) {
	a.log.ErrorContext(r.Context(), "http api: suppression list "+op+" failed", "error", err)
	a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
}
