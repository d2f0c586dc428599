package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// MaxBatch is the largest number of requests POST /v1/messages/batch takes.
const MaxBatch = 1000

// BatchItem is the answer for one request of a batch, in the order given:
// {"Id", "Status": 202} once JetStream stored it (with Duplicate when its
// Id was stored before), or {"Index", "Status", "Error", "Fields"} when it
// was refused (400 invalid, 403 sender not allowed, 413 too large) or could
// not be stored (500).
type BatchItem struct {
	// Index is the request's position in the batch, from 0, on refusals.
	Index *int `json:"Index,omitempty"`
	// Id is the request's Id, once stored.
	Id string `json:"Id,omitempty"`
	// Status is 202, or the refusal's.
	Status int `json:"Status"`
	// Duplicate is true when JetStream already held the Id.
	Duplicate bool `json:"Duplicate,omitempty"`
	// Error says why it was refused.
	Error string `json:"Error,omitempty"`
	// Fields are the broken rules of an invalid request.
	Fields []schema.FieldError `json:"Fields,omitempty"`
}

// BatchResponse is the body of a 202 answer of POST /v1/messages/batch.
type BatchResponse struct {
	// Results has one item per request, in order.
	Results []BatchItem `json:"Results"`
}

// postBatch takes a JSON array, or NDJSON, of up to MaxBatch requests:
// each is admitted like a single POST, and the valid ones are published
// asynchronously (on the bulk lane unless the request or ?priority= names
// another) and awaited together; the answer lists every item in order.
func (a *API) postBatch(rw http.ResponseWriter, r *http.Request) {
	data, ok := a.readBody(rw, r, a.maxBatch)
	if !ok {
		return
	}
	lane := schema.LaneBulk
	if p := r.URL.Query().Get("priority"); p != "" {
		l, err := schema.ParseLane(p)
		if err != nil || l == "" {
			a.fail(rw, r, http.StatusBadRequest, fmt.Sprintf("priority=%q: want urgent, normal or bulk", p), nil)
			return
		}
		lane = l
	}
	items, err := splitBatch(data)
	switch {
	case err != nil:
		a.fail(rw, r, http.StatusBadRequest, err.Error(), nil)
		return
	case len(items) > MaxBatch:
		a.fail(rw, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("%d requests, more than the %d a batch may hold", len(items), MaxBatch), nil)
		return
	case len(items) == 0:
		a.fail(rw, r, http.StatusBadRequest, "the batch holds no request", nil)
		return
	}
	results := make([]BatchItem, len(items))
	futures := make([]jetstream.PubAckFuture, len(items))
	refuse := func(i, status int, msg string, fields []schema.FieldError) {
		results[i] = BatchItem{Index: &i, Status: status, Error: msg, Fields: fields}
	}
	limit := a.bodyLimit()
	for i, item := range items {
		if limit >= 0 && int64(len(item)) > limit {
			refuse(i, http.StatusRequestEntityTooLarge, fmt.Sprintf("request is larger than the limit of %d bytes", limit), nil)
			continue
		}
		if _, err := a.admission.Admit(item); err != nil {
			status, fields := refusal(err)
			refuse(i, status, err.Error(), fields)
			continue
		}
		// Every request continues the caller's trace, as a single POST's
		// does (contract §12): the asynchronous publish takes no context.
		id, f, err := a.producer.PublishJSONAsync(item, producer.WithDefaultPriority(lane), producer.WithTraceContext(r.Context()))
		if err != nil {
			status, fields := refusal(err)
			if !errors.As(err, new(*schema.ValidationError)) {
				status = http.StatusInternalServerError
			}
			refuse(i, status, err.Error(), fields)
			continue
		}
		results[i], futures[i] = BatchItem{Id: id, Status: http.StatusAccepted}, f
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
	defer cancel()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			results[i].Duplicate = ack.Duplicate
		case err := <-f.Err():
			refuse(i, http.StatusInternalServerError, "not stored: "+err.Error(), nil)
		case <-ctx.Done():
			refuse(i, http.StatusInternalServerError, "not acknowledged by JetStream in time", nil)
		}
	}
	writeJSON(rw, http.StatusAccepted, BatchResponse{Results: results})
}

// splitBatch reads a JSON array of objects, or one JSON object a line
// (NDJSON; blank lines skipped), into the requests' payloads.
func splitBatch(data []byte) ([]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(trimmed, &items); err != nil {
			return nil, fmt.Errorf("not a JSON array of requests: %v", err)
		}
		return items, nil
	}
	var items []json.RawMessage
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), len(data)+1)
	for sc.Scan() {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 {
			items = append(items, bytes.Clone(l))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("not NDJSON: %v", err)
	}
	return items, nil
}
