package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// readmeVerify is the receiver's check of the README's "Webhooks" section,
// standard library only; keep the two the same.
func readmeVerify(secret string, h http.Header, body []byte) error {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(secret), "whsec_"))
	if err != nil {
		return err
	}
	id, ts := h.Get("webhook-id"), h.Get("webhook-timestamp")
	unix, err := strconv.ParseInt(ts, 10, 64)
	if id == "" || err != nil {
		return errors.New("missing webhook-id or webhook-timestamp")
	}
	if d := time.Since(time.Unix(unix, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return errors.New("webhook-timestamp too far from now")
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		if b64, ok := strings.CutPrefix(sig, "v1,"); ok {
			if got, err := base64.StdEncoding.DecodeString(b64); err == nil && hmac.Equal(got, want) {
				return nil
			}
		}
	}
	return errors.New("no valid signature")
}

// TestReadmeReceiver: the README's receiver accepts what jetmail sends and
// refuses what another key signed.
func TestReadmeReceiver(t *testing.T) {
	t.Parallel()
	secret := strings.TrimSpace(testSecret())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := readmeVerify(secret, r.Header, body); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	c := Config{Name: "crm", URL: srv.URL, Secret: testKey}
	if status, answer, err := Test(context.Background(), c, nil); status != http.StatusNoContent || err != nil {
		t.Fatalf("the README's receiver answered %d %q (%v) to a test event", status, answer, err)
	}
	c.Secret = []byte("not the receiver's key, but long enough")
	if status, _, _ := Test(context.Background(), c, nil); status != http.StatusUnauthorized {
		t.Fatalf("the README's receiver answered %d to an event signed with another key", status)
	}
	// The specification's vector, timestamps aside.
	h := http.Header{}
	h.Set("webhook-id", vectorID)
	h.Set("webhook-timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	h.Set("webhook-signature", independentSig(mustSecret(t, vectorSecret), vectorID, h.Get("webhook-timestamp"), []byte(vectorBody)))
	if err := readmeVerify(vectorSecret, h, []byte(vectorBody)); err != nil {
		t.Fatal(err)
	}
}

func mustSecret(t *testing.T, s string) []byte {
	t.Helper()
	k, err := ParseSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
