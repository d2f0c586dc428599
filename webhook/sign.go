package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The Standard Webhooks headers of every POST. They are written in lower
// case, as the specification shows them; HTTP header names are case
// insensitive, so r.Header.Get("webhook-id") finds them on a Go server.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a webhook-timestamp may be from the
// receiver's clock, either way, before Verify rejects the request: the
// Standard Webhooks recommendation of 5 minutes.
const DefaultTolerance = 5 * time.Minute

// Errors that Verify returns, wrapped; test for them with errors.Is.
var (
	// ErrMissingHeader means a webhook-id, webhook-timestamp or
	// webhook-signature header is missing or empty.
	ErrMissingHeader = errors.New("webhook: missing header")
	// ErrTimestamp means the webhook-timestamp is not a Unix time in
	// seconds, or is further from now than the tolerance allows (a replay,
	// or a clock that is wrong).
	ErrTimestamp = errors.New("webhook: timestamp not acceptable")
	// ErrNoSignature means no v1 signature in webhook-signature matches the
	// body and secret.
	ErrNoSignature = errors.New("webhook: no matching signature")
)

// Sign returns the Standard Webhooks signature of body for the message id
// sent at ts: "v1," followed by the standard base64 encoding of
// HMAC-SHA256(secret, id + "." + Unix seconds of ts + "." + body). It is
// the value of the webhook-signature header.
func Sign(secret []byte, id string, ts time.Time, body []byte) string {
	return "v1," + base64.StdEncoding.EncodeToString(mac(secret, id, ts.Unix(), body))
}

func mac(secret []byte, id string, unix int64, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, unix, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a webhook request as a receiver should: the three headers
// are present, the timestamp is within tolerance of now (either way; zero
// or less means DefaultTolerance), and one of the space-separated
// signatures in webhook-signature is a v1 signature of body with secret.
// Signatures of other versions are ignored, so a sender may add them.
//
// body must be the request body exactly as received, before any JSON
// decoding. The error wraps ErrMissingHeader, ErrTimestamp or
// ErrNoSignature.
func Verify(secret []byte, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	id, tsText, sigs := headerValue(header, HeaderID), headerValue(header, HeaderTimestamp), headerValue(header, HeaderSignature)
	for i, v := range []string{id, tsText, sigs} {
		if v == "" {
			return fmt.Errorf("%w %s", ErrMissingHeader, []string{HeaderID, HeaderTimestamp, HeaderSignature}[i])
		}
	}
	unix, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s %q is not Unix seconds", ErrTimestamp, HeaderTimestamp, tsText)
	}
	if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s is %s from now, more than %s", ErrTimestamp, HeaderTimestamp, d.Round(time.Second), tolerance)
	}
	want := mac(secret, id, unix, body)
	for _, sig := range strings.Fields(sigs) {
		b64, ok := strings.CutPrefix(sig, "v1,")
		if !ok {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(b64)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrNoSignature
}

// headerValue reads a header whether the map holds it canonicalised (as a
// Go server does) or under its literal lower-case name (as this package
// writes it).
func headerValue(h http.Header, name string) string {
	if v := h.Get(name); v != "" {
		return v
	}
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// setHeaders sets the Standard Webhooks headers of one POST. The names are
// written as the specification shows them, in lower case.
func setHeaders(h http.Header, secret []byte, id string, ts time.Time, body []byte) {
	h[HeaderID] = []string{id}
	h[HeaderTimestamp] = []string{strconv.FormatInt(ts.Unix(), 10)}
	h[HeaderSignature] = []string{Sign(secret, id, ts, body)}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "jetmail")
}
