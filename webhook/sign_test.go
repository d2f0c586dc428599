package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// The test vector of the Standard Webhooks reference libraries (and
// Svix's): a receiver's existing library must accept what we send.
const (
	vectorSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorUnix   = 1614265330
	vectorBody   = `{"test": 2432232314}`
	vectorSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestSignKnownVector(t *testing.T) {
	t.Parallel()
	key, err := ParseSecret(vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := Sign(key, vectorID, time.Unix(vectorUnix, 0), []byte(vectorBody)); got != vectorSig {
		t.Fatalf("Sign = %s, want the specification's %s", got, vectorSig)
	}
}

// independentSig computes a signature the long way, without the package.
func independentSig(key []byte, id, ts string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestVerify(t *testing.T) {
	t.Parallel()
	key, _ := ParseSecret(vectorSecret)
	other := []byte("another key of twenty-four bytes!")
	now := time.Unix(vectorUnix, 0)
	ts := strconv.Itoa(vectorUnix)
	good := independentSig(key, vectorID, ts, []byte(vectorBody))
	header := func(id, ts, sig string) http.Header {
		h := http.Header{}
		// Canonical names, as a Go server sees them.
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, ts)
		h.Set(HeaderSignature, sig)
		return h
	}
	cases := []struct {
		name    string
		header  http.Header
		body    string
		now     time.Time
		tol     time.Duration
		wantErr error
	}{
		{"the vector", header(vectorID, ts, vectorSig), vectorBody, now, 0, nil},
		{"computed independently", header(vectorID, ts, good), vectorBody, now, 0, nil},
		{"lower-case header names, as written", http.Header{"webhook-id": {vectorID}, "webhook-timestamp": {ts}, "webhook-signature": {good}}, vectorBody, now, 0, nil},
		{"several signatures, the good one last", header(vectorID, ts, "v1,AAAA v1a,xyz v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32))+" "+good), vectorBody, now, 0, nil},
		{"4m59s late", header(vectorID, ts, good), vectorBody, now.Add(4*time.Minute + 59*time.Second), 0, nil},
		{"4m59s early", header(vectorID, ts, good), vectorBody, now.Add(-4*time.Minute - 59*time.Second), 0, nil},
		{"5m1s late", header(vectorID, ts, good), vectorBody, now.Add(5*time.Minute + time.Second), 0, ErrTimestamp},
		{"5m1s early", header(vectorID, ts, good), vectorBody, now.Add(-5*time.Minute - time.Second), 0, ErrTimestamp},
		{"a tolerance of 1s", header(vectorID, ts, good), vectorBody, now.Add(2 * time.Second), time.Second, ErrTimestamp},
		{"timestamp in milliseconds", header(vectorID, ts+"000", good), vectorBody, now, 0, ErrTimestamp},
		{"timestamp not a number", header(vectorID, "yesterday", good), vectorBody, now, 0, ErrTimestamp},
		{"body changed", header(vectorID, ts, good), vectorBody + " ", now, 0, ErrNoSignature},
		{"id changed", header("msg_other", ts, good), vectorBody, now, 0, ErrNoSignature},
		{"another key", header(vectorID, ts, independentSig(other, vectorID, ts, []byte(vectorBody))), vectorBody, now, 0, ErrNoSignature},
		{"no v1 prefix", header(vectorID, ts, good[3:]), vectorBody, now, 0, ErrNoSignature},
		{"only other versions", header(vectorID, ts, "v1a,"+good[3:]), vectorBody, now, 0, ErrNoSignature},
		{"not base64", header(vectorID, ts, "v1,!!!"), vectorBody, now, 0, ErrNoSignature},
		{"no id", header("", ts, good), vectorBody, now, 0, ErrMissingHeader},
		{"no timestamp", header(vectorID, "", good), vectorBody, now, 0, ErrMissingHeader},
		{"no signature", header(vectorID, ts, ""), vectorBody, now, 0, ErrMissingHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Verify(key, tc.header, []byte(tc.body), tc.now, tc.tol)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	key := []byte("0123456789abcdef01234567")
	body := []byte(`{"Id":"a","State":"sent"}`)
	now := time.Now()
	h := http.Header{}
	setHeaders(h, key, "a.sent.1.1", now, body)
	if err := Verify(key, h, body, now, 0); err != nil {
		t.Fatalf("Verify of what setHeaders wrote: %v", err)
	}
	if got, want := h["webhook-signature"][0], independentSig(key, "a.sent.1.1", strconv.FormatInt(now.Unix(), 10), body); got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
	if h.Get("Content-Type") != "application/json" || h.Get("User-Agent") != "jetmail" {
		t.Fatalf("headers %v: want Content-Type application/json and User-Agent jetmail", h)
	}
}
