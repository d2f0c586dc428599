package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/dkim"
	"github.com/jetmail/jetmail/schema"
)

const testOneClickURL = "https://mail.example.com/v1/unsubscribe/dG9rZW4tZm9yLWFAZXhhbXBsZS5uZXQ"

// TestBuildUnsubscribe checks the List-Unsubscribe fields of contract §9
// and RFC 8058 for each form of the Unsubscribe key.
func TestBuildUnsubscribe(t *testing.T) {
	t.Parallel()
	longURL := "https://example.com/u?t=" + strings.Repeat("a1", 1500)
	for _, tc := range []struct {
		name     string
		u        schema.Unsubscribe
		oneClick string
		list     string // List-Unsubscribe, white space removed; "" for none
		post     bool
	}{
		{name: "none"},
		{name: "https", u: schema.Unsubscribe{URL: "https://example.com/u/123?list=news"}, list: "<https://example.com/u/123?list=news>", post: true},
		{name: "HTTPS in upper case", u: schema.Unsubscribe{URL: "HTTPS://example.com/u"}, list: "<HTTPS://example.com/u>", post: true},
		{name: "mailto", u: schema.Unsubscribe{URL: "mailto:unsub@example.com?subject=stop"}, list: "<mailto:unsub@example.com?subject=stop>"},
		{name: "one-click", u: schema.Unsubscribe{OneClick: true}, oneClick: testOneClickURL, list: "<" + testOneClickURL + ">", post: true},
		{name: "one-click URL given but not asked for", oneClick: testOneClickURL},
		{name: "URL longer than a line", u: schema.Unsubscribe{URL: longURL}, list: "<" + longURL + ">", post: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := &schema.Request{Id: "u1", From: "news@example.com", To: schema.AddressList{"a@example.net"}, Subject: "s", Body: "b", Unsubscribe: tc.u}
			_, raw := render(t, req, BuildOptions{OneClickURL: tc.oneClick})
			checkWireFormat(t, raw)
			pm := parseMessage(t, raw)
			list := strings.Join(strings.Fields(pm.Header.Get("List-Unsubscribe")), "")
			if list != tc.list {
				t.Errorf("List-Unsubscribe = %q, want %q", list, tc.list)
			}
			post := pm.Header.Get("List-Unsubscribe-Post")
			if want := map[bool]string{true: "List-Unsubscribe=One-Click"}[tc.post]; post != want {
				t.Errorf("List-Unsubscribe-Post = %q, want %q", post, want)
			}
			if n := len(pm.Header["List-Unsubscribe"]); n > 1 {
				t.Errorf("%d List-Unsubscribe fields", n)
			}
		})
	}
}

func TestBuildUnsubscribeErrors(t *testing.T) {
	t.Parallel()
	req := &schema.Request{Id: "u2", From: "news@example.com", To: schema.AddressList{"a@example.net"}, Unsubscribe: schema.Unsubscribe{OneClick: true}}
	_, err := Build(req, BuildOptions{})
	if !errors.Is(err, ErrOneClickNotConfigured) {
		t.Fatalf("Build without OneClickURL: %v, want ErrOneClickNotConfigured", err)
	}
	for _, want := range []string{"--public-url", "--unsubscribe-secret-file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say to configure %s", err, want)
		}
	}
	for _, bad := range []string{"ftp://x/u", "https://x/u v", "https://x/<u>", "/v1/unsubscribe/t"} {
		if _, err := Build(req, BuildOptions{OneClickURL: bad}); err == nil || errors.Is(err, ErrOneClickNotConfigured) {
			t.Errorf("OneClickURL %q: error %v", bad, err)
		}
	}
}

// TestDKIMSignsUnsubscribe checks that both one-click fields are signed
// (contract §9) and that changing either breaks the signature.
func TestDKIMSignsUnsubscribe(t *testing.T) {
	t.Parallel()
	key := testKey(t, "example.com", "e2026", testEd25519())
	signer, err := NewDKIMSigner([]*dkim.Key{key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	req := &schema.Request{Id: "u3", From: "news@example.com", To: schema.AddressList{"a@example.net"}, Subject: "s", Body: "b", Unsubscribe: schema.Unsubscribe{OneClick: true}}
	env, err := Build(req, BuildOptions{DKIM: signer, OneClickURL: testOneClickURL})
	if err != nil {
		t.Fatal(err)
	}
	received := sendOverSMTP(t, env, false)
	lookup := dnsZone(t, key)
	vs := verifyDKIM(t, received, lookup)
	if len(vs) != 1 || vs[0].Err != nil {
		t.Fatalf("verification: %+v", vs)
	}
	keys := strings.Join(lower(vs[0].HeaderKeys), ":")
	if !strings.Contains(keys, ":list-unsubscribe:list-unsubscribe-post:") {
		t.Errorf("h=%s does not cover List-Unsubscribe and List-Unsubscribe-Post", keys)
	}
	for _, tamper := range [][2]string{
		{testOneClickURL, "https://evil.example/x"},
		{"List-Unsubscribe-Post: List-Unsubscribe=One-Click", "List-Unsubscribe-Post: List-Unsubscribe=Nope"},
	} {
		changed := strings.Replace(string(received), tamper[0], tamper[1], 1)
		if changed == string(received) {
			t.Fatalf("%q not in the message", tamper[0])
		}
		if vs := verifyDKIM(t, []byte(changed), lookup); len(vs) != 1 || vs[0].Err == nil {
			t.Errorf("signature still verifies after %q became %q", tamper[0], tamper[1])
		}
	}
}
