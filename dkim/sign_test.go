package dkim

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/google/go-cmp/cmp"
)

// RFC 6376 §3.4.5, the example of relaxed canonicalization.
func TestRelaxedCanonicalizationRFCExample(t *testing.T) {
	t.Parallel()
	msg := "A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"
	header, body := splitMessage([]byte(msg))
	var got []string
	for _, f := range parseFields(header) {
		got = append(got, relaxedHeader(f.raw))
	}
	if diff := cmp.Diff([]string{"a:X", "b:Y Z"}, got); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}
	if got, want := relaxedBodyHash(body), sha256.Sum256([]byte(" C\r\nD E\r\n")); got != want {
		t.Errorf("body hash differs from the hash of the RFC's canonical body")
	}
	for in, want := range map[string]string{"": "", "\r\n\r\n": "", "x": "x\r\n", "x\r\n \t\r\n": "x\r\n", "a\r\n\r\nb": "a\r\n\r\nb\r\n"} {
		if relaxedBodyHash([]byte(in)) != sha256.Sum256([]byte(want)) {
			t.Errorf("relaxed body of %q is not %q", in, want)
		}
	}
}

// zone answers TXT look-ups with the records of keys, parsed back from the
// zone-file lines Record makes.
func zone(t testing.TB, keys ...*Key) func(string) ([]string, error) {
	t.Helper()
	records := map[string]string{}
	for _, k := range keys {
		line, err := k.Record()
		if err != nil {
			t.Fatal(err)
		}
		name, rest, _ := strings.Cut(line, ". IN TXT ")
		var value strings.Builder
		for _, s := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(rest, -1) {
			value.WriteString(s[1])
		}
		records[name] = value.String()
	}
	return func(name string) ([]string, error) {
		if v, ok := records[strings.ToLower(name)]; ok {
			return []string{v}, nil
		}
		return nil, fmt.Errorf("no record for %s", name)
	}
}

func verify(t testing.TB, raw []byte, lookup func(string) ([]string, error)) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(raw), &msgauth.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

var fixedSeed = bytes.Repeat([]byte{9}, ed25519.SeedSize)

func edTestKey(t testing.TB, domain, selector string) *Key {
	t.Helper()
	k, err := NewKey(domain, selector, ed25519.NewKeyFromSeed(fixedSeed))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The fields to sign in these tests: the contract's list.
var testHeaders = []string{"From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version",
	"Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post", "Received"}

const testMessage = "Received: from a by b; Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
	"Received: from c by a; Tue, 1 Dec 2026 09:59:59 +0000\r\n" +
	"From: \"Jan  Kowalski\" <jan@example.com>\r\n" +
	"To: a@example.net,\r\n\tb@example.net  \r\n" +
	"Cc: c@example.net\r\n" +
	"Reply-To: r@example.com\r\n" +
	"Subject: =?UTF-8?B?WmHFvMOzxYLEhyBnxJnFm2zEhQ==?=\r\n" +
	"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"List-Unsubscribe: <https://example.com/u/1>\r\n" +
	"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
	"Content-Type: text/plain; charset=UTF-8\r\n" +
	"X-Not-Signed: x\r\n" +
	"\r\n" +
	"Hello  there \t\r\n" +
	".dot line\r\n" +
	"\r\n" +
	"\r\n"

func TestSignVerifies(t *testing.T) {
	t.Parallel()
	rsaK, err := NewKey("example.com", "s2026", rsaKey())
	if err != nil {
		t.Fatal(err)
	}
	edK := edTestKey(t, "example.com", "e2026")
	lookup := zone(t, rsaK, edK)
	when := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	sigs, err := Sign([]byte(testMessage), []*Key{rsaK, edK}, SignOptions{Headers: testHeaders, Oversign: []string{"From"}, Time: when})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(strings.TrimSuffix(string(sigs), "\r\n"), "\r\n") {
		if len(l) > maxLine {
			t.Errorf("signature line %d is %d characters long: %q", i, len(l), l)
		}
	}
	signed := append(sigs, testMessage...)
	vs := verify(t, signed, lookup)
	if len(vs) != 2 {
		t.Fatalf("%d signatures, want 2", len(vs))
	}
	wantKeys := []string{"From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version",
		"Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post", "Received", "Received", "From"}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("%s: %v\n%s", v.Domain, v.Err, signed)
		}
		if diff := cmp.Diff(wantKeys, v.HeaderKeys); diff != "" {
			t.Errorf("h= (-want +got):\n%s", diff)
		}
		if !v.Time.Equal(when) {
			t.Errorf("t= %v, want %v", v.Time, when)
		}
	}
	if !bytes.Contains(sigs, []byte("a=rsa-sha256;")) || !bytes.Contains(sigs, []byte("a=ed25519-sha256;")) {
		t.Errorf("signatures:\n%s", sigs)
	}

	// What the signatures cover cannot change; what they do not, can.
	for _, tc := range []struct {
		name  string
		msg   string
		valid bool
	}{
		{"header added", "X-Later: 1\r\n" + testMessage, true},
		{"white space in a signed header", strings.Replace(testMessage, "Cc: c@example.net", "Cc:   c@example.net  ", 1), true},
		{"trailing empty lines", testMessage + "\r\n\r\n", true},
		{"signed header changed", strings.Replace(testMessage, "Cc: c@", "Cc: d@", 1), false},
		{"body changed", strings.Replace(testMessage, "Hello", "Hallo", 1), false},
		{"From added on top", "From: evil@example.com\r\n" + testMessage, false},
		{"From added below", strings.Replace(testMessage, "X-Not-Signed: x\r\n", "X-Not-Signed: x\r\nFrom: evil@example.com\r\n", 1), false},
		{"Received dropped", strings.Replace(testMessage, "Received: from c by a; Tue, 1 Dec 2026 09:59:59 +0000\r\n", "", 1), false},
	} {
		for _, v := range verify(t, append(sigs, tc.msg...), lookup) {
			if (v.Err == nil) != tc.valid {
				t.Errorf("%s: %s: error %v, want valid %v", tc.name, v.Domain, v.Err, tc.valid)
			}
		}
	}
}

func TestSignRefuses(t *testing.T) {
	t.Parallel()
	k := edTestKey(t, "example.com", "e1")
	opts := SignOptions{Headers: []string{"From", "Subject"}}
	for name, msg := range map[string]string{
		"bare LF":        "From: a@example.com\nSubject: x\r\n\r\nbody\r\n",
		"bare CR":        "From: a@example.com\r\n\r\nbo\rdy\r\n",
		"CR at the end":  "From: a@example.com\r\n\r\nbody\r",
		"no From":        "Subject: x\r\n\r\nbody\r\n",
		"From not asked": "From: a@example.com\r\n\r\n",
	} {
		o := opts
		if name == "From not asked" {
			o.Headers = []string{"Subject"}
		}
		if _, err := Sign([]byte(msg), []*Key{k}, o); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
	if sigs, err := Sign([]byte("From: a@example.com\r\n\r\n"), nil, opts); sigs != nil || err != nil {
		t.Errorf("no keys: %q, %v", sigs, err)
	}
}

// FuzzSign signs messages with arbitrary header values and bodies and
// verifies them with go-msgauth: the two implementations must agree on
// the canonical forms.
func FuzzSign(f *testing.F) {
	f.Add("Zażółć", "a@example.com", "Hello\r\n", " x \t y ")
	f.Add("", "", "", "")
	f.Add("a  b\t", "x,\r\n y", "line  \r\n\r\n \r\n", "\t")
	f.Add(strings.Repeat("long subject ", 20), strings.Repeat("to@example.com, ", 10), strings.Repeat("x", 2000), ":")
	k := edTestKey(f, "example.com", "f1")
	lookup := zone(f, k)
	f.Fuzz(func(t *testing.T, subject, to, body, extra string) {
		clean := func(s string, header bool) string {
			s = strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(s)
			if header {
				// A header value may fold, but a continuation line needs
				// white space first, and no line may be empty.
				var b strings.Builder
				for i, l := range strings.Split(s, "\n") {
					if i > 0 {
						b.WriteString("\r\n ")
					}
					b.WriteString(l)
				}
				return b.String()
			}
			return strings.ReplaceAll(s, "\n", "\r\n")
		}
		msg := "From: a@example.com\r\nTo: " + clean(to, true) + "\r\nSubject: " + clean(subject, true) +
			"\r\nX-Extra: " + clean(extra, true) + "\r\n\r\n" + clean(body, false)
		sigs, err := Sign([]byte(msg), []*Key{k}, SignOptions{Headers: []string{"From", "To", "Subject", "X-Extra"}, Oversign: []string{"From"}})
		if err != nil {
			t.Fatalf("Sign: %v", err)
		}
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(append(sigs, msg...)), &msgauth.VerifyOptions{LookupTXT: lookup})
		if err != nil {
			t.Fatalf("verify: %v", err)
		}
		if len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("verification: %+v\n%q", vs[0], append(sigs, msg...))
		}
	})
}
