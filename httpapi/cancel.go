package httpapi

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
)

// BatchCancelResponse is the body of DELETE /v1/batches/{BatchId}.
type BatchCancelResponse struct {
	// Cancelled is how many messages of the batch are now cancelled.
	Cancelled int `json:"Cancelled"`
	// TooLate is how many were sent, failed or being sent.
	TooLate int `json:"TooLate"`
}

// cancel answers DELETE /v1/messages/{Id} (contract §8): 200 and the
// cancelled event when the message is (now, or already) cancelled; 409 and
// the latest event when it is too late; 404 for an Id nobody knows.
func (a *API) cancel(rw http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !schema.ValidID(id) {
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
		return
	}
	// A worker may be about to send it: Cancel waits for it up to the
	// SMTP timeout.
	ctx, cancel := context.WithTimeout(r.Context(), 45*time.Second)
	defer cancel()
	res, err := a.producer.Cancel(ctx, id)
	switch {
	case errors.Is(err, producer.ErrNoStream):
		a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		return
	case err != nil:
		a.log.ErrorContext(r.Context(), "http api: cancel failed", "id", id, "error", err)
		a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	switch res.Outcome {
	case producer.Cancelled:
		if a.cancelled != nil {
			a.cancelled.Inc()
		}
		writeJSON(rw, http.StatusOK, res.Event)
	case producer.AlreadyCancelled:
		writeJSON(rw, http.StatusOK, res.Event)
	case producer.Unknown:
		a.fail(rw, r, http.StatusNotFound, "unknown Id", nil)
	default:
		writeJSON(rw, http.StatusConflict, res.Event)
	}
}

// cancelBatch answers DELETE /v1/batches/{BatchId}: 200 and the counts.
func (a *API) cancelBatch(rw http.ResponseWriter, r *http.Request) {
	batch := r.PathValue("batch")
	if !schema.ValidID(batch) {
		a.fail(rw, r, http.StatusBadRequest, "BatchId must match [A-Za-z0-9_-]{1,128}", nil)
		return
	}
	res, err := a.producer.CancelBatch(r.Context(), batch)
	if err != nil {
		a.log.ErrorContext(r.Context(), "http api: batch cancel failed", "batch", batch, "error", err)
		a.fail(rw, r, http.StatusInternalServerError, err.Error(), nil)
		return
	}
	if a.cancelled != nil {
		a.cancelled.Add(float64(res.Published))
	}
	writeJSON(rw, http.StatusOK, BatchCancelResponse{Cancelled: res.Cancelled, TooLate: res.TooLate})
}
