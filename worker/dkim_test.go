package worker

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/dkim"
	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

// Test keys: generating RSA keys is slow under the race detector, so each
// is made once.
var (
	testRSA = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	testRSA2 = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	testEd25519 = sync.OnceValue(func() ed25519.PrivateKey {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func testKey(t testing.TB, domain, selector string, signer crypto.Signer) *dkim.Key {
	t.Helper()
	k, err := dkim.NewKey(domain, selector, signer)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dnsZone answers TXT look-ups from the records dkim.Record makes for keys,
// parsed back from the zone-file line as a resolver would serve them (the
// quoted strings joined): what a verifier sees once the records printed by
// `jetmail dkim keygen` are published.
func dnsZone(t testing.TB, keys ...*dkim.Key) func(string) ([]string, error) {
	t.Helper()
	zone := map[string]string{}
	line := regexp.MustCompile(`^(\S+)\. IN TXT((?: "[^"]*")+)$`)
	for _, k := range keys {
		rec, err := k.Record()
		if err != nil {
			t.Fatal(err)
		}
		m := line.FindStringSubmatch(rec)
		if m == nil {
			t.Fatalf("record %q is not a zone-file TXT line", rec)
		}
		var value strings.Builder
		for _, s := range regexp.MustCompile(`"([^"]*)"`).FindAllStringSubmatch(m[2], -1) {
			value.WriteString(s[1])
		}
		zone[m[1]] = value.String()
	}
	return func(name string) ([]string, error) {
		if v, ok := zone[strings.ToLower(name)]; ok {
			return []string{v}, nil
		}
		return nil, fmt.Errorf("no TXT record for %s", name)
	}
}

// verifyDKIM verifies every DKIM signature of raw with go-msgauth, an
// implementation independent of go-mail's signer.
func verifyDKIM(t testing.TB, raw []byte, lookup func(string) ([]string, error)) []*msgauth.Verification {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(raw), &msgauth.VerifyOptions{LookupTXT: lookup})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

// sendOverSMTP sends env through a real SMTP session with the worker's
// transport and returns what the server received.
func sendOverSMTP(t *testing.T, env *Envelope, noPipelining bool) []byte {
	t.Helper()
	srv := smtptest.NewServer(t)
	tr, err := NewSMTPTransport(map[string]config.SMTP{"default": {URL: srv.URL(), NoPipelining: noPipelining}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tr.Send(ctx, env); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server received %d messages, want 1", len(msgs))
	}
	return msgs[0].Data
}

// dotLines is a body whose lines the SMTP layer must dot-stuff.
const dotLines = ".\n..two dots\n.leading dot\nend\n"

// TestDKIMSignaturesVerify builds messages, sends them over SMTP with the
// worker's transport (pipelined and not), and verifies the DKIM
// signatures of what the server received with go-msgauth against the
// records dkim.Record makes.
func TestDKIMSignaturesVerify(t *testing.T) {
	t.Parallel()
	rsaKey := testKey(t, "example.com", "s2026", testRSA())
	edKey := testKey(t, "example.com", "e2026", testEd25519())
	polishKey := testKey(t, "x.pl", "s1", testRSA2())
	polishEdKey := testKey(t, "x.pl", "e1", testEd25519())
	lookup := dnsZone(t, rsaKey, edKey, polishKey, polishEdKey)
	png := []byte("\x89PNG\r\n\x1a\n fake image \x00\x01")

	rich := richRequest()
	rich.Headers["List-Unsubscribe"] = "<mailto:unsub@x.pl?subject=unsubscribe>"

	tests := []struct {
		name    string
		keys    []*dkim.Key
		req     *schema.Request
		domain  string // d= of every signature; "" for unsigned
		want    []string
		headers []string // fields the signatures must cover, besides the over-signed From
	}{
		{
			name: "plain text, RSA", keys: []*dkim.Key{rsaKey},
			req:    &schema.Request{Id: "plain", From: "shop@example.com", To: schema.AddressList{"a@example.net"}, Subject: "Hello", Body: "Hello\n" + dotLines},
			domain: "example.com", want: []string{dkim.RSASHA256},
			headers: []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
		},
		{
			name: "HTML with inline image and attachment, Ed25519", keys: []*dkim.Key{edKey},
			req: &schema.Request{
				Id: "html", From: `"Sklep" <shop@example.com>`, To: schema.AddressList{"a@example.net"}, CC: schema.AddressList{"c@example.net"},
				ReplyTo: schema.AddressList{"help@example.com"}, Subject: "Zamówienie", IsHtml: true,
				Body: `<p>Dzień dobry</p><p><img src="cid:logo"></p>` + "\n.<b>dot</b>\n",
				Attachments: []schema.Attachment{
					{FileName: "logo.png", ContentId: "logo", ContentType: "image/png", ContentTransferEncoding: "base64", ContentData: base64.StdEncoding.EncodeToString(png)},
					{FileName: "faktura.pdf", ContentData: "%PDF-1.4\n.fake\n"},
				},
			},
			domain: "example.com", want: []string{dkim.Ed25519SHA256},
			headers: []string{"From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
		},
		{
			name: "Polish headers, both algorithms", keys: []*dkim.Key{polishKey, polishEdKey, rsaKey},
			req: rich, domain: "x.pl", want: []string{dkim.RSASHA256, dkim.Ed25519SHA256},
			headers: []string{"From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "List-Unsubscribe"},
		},
		{
			name: "6,000-character line, both keys", keys: []*dkim.Key{rsaKey, edKey},
			req:    &schema.Request{Id: "long-line", From: "shop@example.com", To: schema.AddressList{"a@example.net"}, Subject: "Long", Body: strings.Repeat("abcdefghij", 600) + "\n" + dotLines + strings.Repeat("ż", 3000)},
			domain: "example.com", want: []string{dkim.RSASHA256, dkim.Ed25519SHA256},
			headers: []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
		},
		{
			name: "subdomain sender", keys: []*dkim.Key{rsaKey, edKey},
			req:    &schema.Request{Id: "sub", From: "news@mail.Example.com", To: schema.AddressList{"a@example.net"}, Subject: "s", Body: "b"},
			domain: "example.com", want: []string{dkim.RSASHA256, dkim.Ed25519SHA256},
			headers: []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"},
		},
		{
			name: "other domain, unsigned", keys: []*dkim.Key{rsaKey, edKey},
			req: &schema.Request{Id: "other", From: "shop@example.org", To: schema.AddressList{"a@example.net"}, Subject: "s", Body: "b"},
		},
		{
			name: "look-alike domain, unsigned", keys: []*dkim.Key{rsaKey},
			req: &schema.Request{Id: "lookalike", From: "shop@badexample.com", To: schema.AddressList{"a@example.net"}, Subject: "s", Body: "b"},
		},
	}
	for _, tc := range tests {
		for _, noPipelining := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nopipelining=%v", tc.name, noPipelining), func(t *testing.T) {
				t.Parallel()
				metrics := NewMetrics(nil)
				signer, err := NewDKIMSigner(tc.keys, metrics)
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.req.Validate(); err != nil {
					t.Fatal(err)
				}
				env, err := Build(tc.req, BuildOptions{DKIM: signer})
				if err != nil {
					t.Fatal(err)
				}
				built, err := env.render()
				if err != nil {
					t.Fatal(err)
				}
				checkWireFormat(t, built)
				received := sendOverSMTP(t, env, noPipelining)
				if !bytes.Equal(received, built) {
					t.Errorf("the SMTP layer changed the message: %d bytes built, %d received", len(built), len(received))
				}
				vs := verifyDKIM(t, received, lookup)
				var algs []string
				for _, v := range vs {
					if v.Err != nil {
						t.Errorf("signature of %s does not verify: %v\n%s", v.Domain, v.Err, received)
						continue
					}
					if v.Domain != tc.domain {
						t.Errorf("d=%s, want %s", v.Domain, tc.domain)
					}
					wantKeys := append(slices.Clone(tc.headers), "From")
					if diff := cmp.Diff(lower(wantKeys), lower(v.HeaderKeys)); diff != "" {
						t.Errorf("signed fields (-want +got):\n%s", diff)
					}
				}
				for _, m := range regexp.MustCompile(`(?m)^DKIM-Signature: .*a=([a-z0-9-]+);`).FindAllSubmatch(fold(received), -1) {
					algs = append(algs, string(m[1]))
				}
				slices.Sort(algs)
				want := slices.Sorted(slices.Values(tc.want))
				if diff := cmp.Diff(want, algs); diff != "" {
					t.Errorf("signature algorithms (-want +got):\n%s", diff)
				}
				if len(vs) != len(tc.want) {
					t.Errorf("%d signatures verified, want %d", len(vs), len(tc.want))
				}
				wantCount := 0.0
				if tc.domain != "" {
					wantCount = 1
				}
				if got := testutil.ToFloat64(metrics.DKIMSigned.WithLabelValues(tc.domain)); got != wantCount {
					t.Errorf("jetmail_dkim_signed_total{domain=%q} = %v, want %v", tc.domain, got, wantCount)
				}
				if tc.domain == "" && bytes.Contains(received, []byte("DKIM-Signature")) {
					t.Error("a message from another domain was signed")
				}
			})
		}
	}
}

func lower(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = strings.ToLower(v)
	}
	return out
}

// fold unfolds header continuation lines, for matching whole fields.
func fold(raw []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(raw, []byte("\r\n "), []byte(" ")), []byte("\r\n\t"), []byte(" "))
}

// TestDKIMTampering checks that the signatures fail once what they cover
// changes: a signed header, the body, a second From (over-signing) above
// or below the first; and that they survive a change they do not cover.
func TestDKIMTampering(t *testing.T) {
	t.Parallel()
	rsaKey := testKey(t, "example.com", "s2026", testRSA())
	edKey := testKey(t, "example.com", "e2026", testEd25519())
	lookup := dnsZone(t, rsaKey, edKey)
	signer, err := NewDKIMSigner([]*dkim.Key{rsaKey, edKey}, nil)
	if err != nil {
		t.Fatal(err)
	}
	req := &schema.Request{Id: "tamper", From: `"Sklep Żółw" <shop@example.com>`, To: schema.AddressList{"a@example.net"},
		Subject: "Twoje zamówienie", Body: "Kwota: 100 zł\n"}
	env, err := Build(req, BuildOptions{DKIM: signer})
	if err != nil {
		t.Fatal(err)
	}
	received := sendOverSMTP(t, env, false)
	header, body, _ := bytes.Cut(received, []byte("\r\n\r\n"))
	subject := regexp.MustCompile(`(?m)^Subject: .*(\r\n[ \t].*)*\r\n`)
	if !subject.Match(received) {
		t.Fatalf("no Subject field:\n%s", received)
	}
	join := func(h, b []byte) []byte { return slices.Concat(h, []byte("\r\n\r\n"), b) }
	for _, tc := range []struct {
		name  string
		raw   []byte
		valid bool
	}{
		{"unchanged", received, true},
		{"unsigned field added", join(slices.Concat(header, []byte("\r\nX-Spam-Score: 0")), body), true},
		{"subject changed", subject.ReplaceAll(received, []byte("Subject: Twoje zamowienie\r\n")), false},
		{"body changed", join(header, bytes.Replace(body, []byte("100"), []byte("900"), 1)), false},
		{"body line added", join(header, slices.Concat(body, []byte("Zapłać na konto 123\r\n"))), false},
		{"second From on top", slices.Concat([]byte("From: evil@example.com\r\n"), received), false},
		{"second From at the bottom", join(slices.Concat(header, []byte("\r\nFrom: evil@example.com")), body), false},
	} {
		vs := verifyDKIM(t, tc.raw, lookup)
		if len(vs) != 2 {
			t.Fatalf("%s: %d signatures, want 2", tc.name, len(vs))
		}
		for _, v := range vs {
			if (v.Err == nil) != tc.valid {
				t.Errorf("%s: verification error %v, want valid %v", tc.name, v.Err, tc.valid)
			}
		}
	}
}

func TestDKIMSignerChoosesDomain(t *testing.T) {
	t.Parallel()
	parent := testKey(t, "example.com", "p1", testEd25519())
	child := testKey(t, "mail.example.com", "c1", testEd25519())
	idn := testKey(t, "żółw.pl", "z1", testEd25519())
	s, err := NewDKIMSigner([]*dkim.Key{parent, child, idn}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for from, want := range map[string]string{
		"a@example.com":        "example.com",
		"a@EXAMPLE.COM":        "example.com",
		"a@news.example.com":   "example.com",
		"a@mail.example.com":   "mail.example.com",
		"a@x.mail.example.com": "mail.example.com",
		"a@xmail.example.com":  "example.com",
		"a@example.org":        "",
		"a@com":                "",
		"a@żółw.pl":            "xn--w-uga1v8h.pl",
		"a@xn--w-uga1v8h.pl":   "xn--w-uga1v8h.pl",
		"no-at-sign":           "",
	} {
		if got, _ := s.keysFor(from); got != want {
			t.Errorf("keysFor(%q) = %q, want %q", from, got, want)
		}
	}
	if d, keys := (*DKIMSigner)(nil).keysFor("a@example.com"); d != "" || keys != nil {
		t.Error("the nil signer chose keys")
	}
	if _, err := NewDKIMSigner([]*dkim.Key{parent, testKey(t, "Example.com", "P1", testEd25519())}, nil); err == nil {
		t.Error("two keys with the same domain and selector accepted")
	}
	if _, err := NewDKIMSigner([]*dkim.Key{nil}, nil); err == nil {
		t.Error("a nil key accepted")
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("dkim", "keys", s)
	if !strings.Contains(logged.String(), "mail.example.com=\"c1 (ed25519-sha256)\"") {
		t.Errorf("log line %q", logged.String())
	}
	seed := base64.StdEncoding.EncodeToString(testEd25519().Seed())
	if strings.Contains(logged.String(), seed[:20]) {
		t.Error("the log line holds key material")
	}
}

// TestDKIMConcurrentSigning signs from many goroutines with one signer
// (run with -race).
func TestDKIMConcurrentSigning(t *testing.T) {
	t.Parallel()
	rsaKey := testKey(t, "example.com", "s2026", testRSA())
	edKey := testKey(t, "example.com", "e2026", testEd25519())
	lookup := dnsZone(t, rsaKey, edKey)
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	signer, err := NewDKIMSigner([]*dkim.Key{rsaKey, edKey}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := &schema.Request{Id: fmt.Sprintf("c%d", i), From: "a@example.com", To: schema.AddressList{"b@example.net"}, Subject: fmt.Sprint(i), Body: "b"}
			env, err := Build(req, BuildOptions{DKIM: signer})
			if err == nil {
				var raw []byte
				if raw, err = env.render(); err == nil {
					var vs []*msgauth.Verification
					vs, err = msgauth.VerifyWithOptions(bytes.NewReader(raw), &msgauth.VerifyOptions{LookupTXT: lookup})
					for _, v := range vs {
						err = errors.Join(err, v.Err)
					}
					if err == nil && len(vs) != 2 {
						err = fmt.Errorf("%d signatures, want 2", len(vs))
					}
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// One count per message, not per signature, under the registered name.
	want := fmt.Sprintf(`# HELP jetmail_dkim_signed_total Messages signed with DKIM (one per delivery attempt), by signing domain.
# TYPE jetmail_dkim_signed_total counter
jetmail_dkim_signed_total{domain="example.com"} %d
`, n)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "jetmail_dkim_signed_total"); err != nil {
		t.Error(err)
	}
}

// BenchmarkBuildDKIM measures building and rendering a 2 KB message
// unsigned and signed with one key of each kind: the difference is the
// cost of signing per message.
func BenchmarkBuildDKIM(b *testing.B) {
	rsaSigner, err := NewDKIMSigner([]*dkim.Key{testKey(b, "example.com", "s2026", testRSA())}, nil)
	if err != nil {
		b.Fatal(err)
	}
	edSigner, err := NewDKIMSigner([]*dkim.Key{testKey(b, "example.com", "e2026", testEd25519())}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		signer *DKIMSigner
	}{{"build", nil}, {"build+RSA-2048", rsaSigner}, {"build+Ed25519", edSigner}} {
		b.Run(bc.name, func(b *testing.B) {
			req := benchRequest(0)
			req.From = "sender@example.com"
			b.ReportAllocs()
			for b.Loop() {
				env, err := Build(req, BuildOptions{DKIM: bc.signer})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := env.render(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
