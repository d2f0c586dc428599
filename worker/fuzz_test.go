package worker

import (
	"bytes"
	"net/mail"
	"net/textproto"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
)

// builtHeaders are the header fields Build writes on its own.
var builtHeaders = map[string]bool{
	"Date": true, "Mime-Version": true, "Message-Id": true, "Subject": true,
	"User-Agent": true, "X-Mailer": true, "From": true, "To": true, "Cc": true,
	"Reply-To": true, "Content-Type": true, "Content-Transfer-Encoding": true,
	"Importance": true, "X-Priority": true, "Priority": true, "X-Msmail-Priority": true,
}

// fuzzOneClickURL is the one-click URL FuzzBuild passes.
const fuzzOneClickURL = "https://mail.example.com/v1/unsubscribe/token"

// FuzzBuild checks properties of every message built from a valid request:
// the wire format holds (CRLF line ends only, no line over 998 characters,
// no header folded right after its colon, UTF-8 in every encoded word);
// net/mail parses it; it has no header field the request did not ask for
// (no header injection through any field); Bcc never appears; and every
// header that carries request text reads back exactly as the request gave
// it: the recipients' addresses and display names, the sender's display
// name, the subject, the extra header and the attachment's file name (in
// Content-Type name and Content-Disposition filename). unsub is the
// Unsubscribe key ("" none, "true" jetmail's endpoint, else a URL): its
// List-Unsubscribe holds exactly the URL, and List-Unsubscribe-Post is
// there for https: and one-click only.
func FuzzBuild(f *testing.F) {
	f.Add("a@example.com", "Jan <b@example.com>", "hidden@example.com", "Jan Kowalski", polish, "body", "X-Tag", "v", "plik.txt", false, "https://example.com/u/1")
	f.Add(`"Kowalski, Jan" <jan@example.com>;c@example.com`, "", "", "", "Re: x\r\nBcc: evil@example.com", "<p>hi</p>", "X-A", "b\nX-Injected: 1", "a\r\nb.txt", true, "true")
	f.Add("a@example.com", "", "", "Ünïcödé \"quoted\"", "=?UTF-8?q?not_really?=", "", "List-Unsubscribe", "<mailto:u@example.com>", "=?utf-8?q?x?=.pdf", true, "mailto:u@example.com?subject=x")
	f.Add(`"Zażółć Gęślą" <a@x.pl>`, "", "", "Bérénice-Amélie Rosemonde Dûbois-Bénard", "Zażółć gęślą jaźń — ąćęłńóśźż ĄĆĘŁŃÓŚŹŻ ✓", "b", "X-Campaign", " jesień  2026 ", "Faktura żółć 2026 — ąę.pdf", false, "")
	f.Add("a@example.com", "", "", "  ", strings.Repeat("długi temat ", 40), "b", "X-Long", strings.Repeat("y", 1100), strings.Repeat("załącznik ", 30)+".txt", false, "https://example.com/?t="+strings.Repeat("x", 1200))
	f.Fuzz(func(t *testing.T, to, cc, bcc, fromName, subject, body, hName, hValue, fileName string, isHTML bool, unsub string) {
		req := &schema.Request{
			Id:      "fuzz-1",
			To:      schema.SplitAddresses(to),
			CC:      schema.SplitAddresses(cc),
			Bcc:     schema.SplitAddresses(bcc),
			From:    (&mail.Address{Name: fromName, Address: "sender@example.com"}).String(),
			Subject: subject,
			Body:    body,
			IsHtml:  schema.Bool(isHTML),
		}
		if hName != "" {
			req.Headers = map[string]string{hName: hValue}
		}
		if fileName != "" {
			req.Attachments = []schema.Attachment{{FileName: fileName, ContentData: "data"}}
		}
		switch unsub {
		case "":
		case "true":
			req.Unsubscribe = schema.Unsubscribe{OneClick: true}
		default:
			req.Unsubscribe = schema.Unsubscribe{URL: unsub}
		}
		if req.Validate() != nil {
			return // only valid requests are built
		}
		env, err := Build(req, BuildOptions{OneClickURL: fuzzOneClickURL})
		if err != nil {
			t.Fatalf("Build of a valid request failed: %v", err)
		}
		raw, err := env.render()
		if err != nil {
			t.Fatalf("render: %v", err)
		}
		checkWireFormat(t, raw)
		m, err := mail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("net/mail cannot parse the message: %v", err)
		}
		for key := range m.Header {
			k := textproto.CanonicalMIMEHeaderKey(key)
			if builtHeaders[k] {
				continue
			}
			if hName != "" && strings.EqualFold(k, hName) {
				continue
			}
			if unsub != "" && (k == "List-Unsubscribe" || k == "List-Unsubscribe-Post") {
				continue
			}
			t.Fatalf("header %q appeared without being asked for (request headers %q)", key, req.Headers)
		}
		if len(m.Header["Bcc"]) > 0 {
			t.Fatal("Bcc header written")
		}
		for _, f := range []struct {
			key  string
			list schema.AddressList
		}{{"To", req.To}, {"Cc", req.CC}, {"From", schema.AddressList{req.From}}} {
			want, _ := f.list.Addresses()
			var got []*mail.Address
			if len(want) > 0 {
				got, err = m.Header.AddressList(f.key)
				if err != nil {
					t.Fatalf("%s does not parse back: %v (%q)", f.key, err, m.Header.Get(f.key))
				}
			}
			if len(got) != len(want) {
				t.Fatalf("%s: %d addresses back, want %d", f.key, len(got), len(want))
			}
			for i := range want {
				if got[i].Address != want[i].Address || got[i].Name != want[i].Name {
					t.Fatalf("%s[%d] = %q <%s>, want %q <%s>\n%s", f.key, i, got[i].Name, got[i].Address, want[i].Name, want[i].Address, m.Header[f.key])
				}
			}
		}
		if s, err := wordDecoder.DecodeHeader(m.Header.Get("Subject")); err != nil || s != subject {
			t.Fatalf("Subject back = %q (%v), want %q\n%q", s, err, subject, m.Header["Subject"])
		}
		if hName != "" {
			if v, err := wordDecoder.DecodeHeader(m.Header.Get(hName)); err != nil || v != hValue {
				t.Fatalf("%s back = %q (%v), want %q\n%q", hName, v, err, hValue, m.Header.Get(hName))
			}
		}
		if unsub != "" {
			url, post := req.Unsubscribe.URL, req.Unsubscribe.HTTPS()
			if req.Unsubscribe.OneClick {
				url, post = fuzzOneClickURL, true
			}
			if got := strings.Join(strings.Fields(m.Header.Get("List-Unsubscribe")), ""); got != "<"+url+">" {
				t.Fatalf("List-Unsubscribe = %q, want <%s>", got, url)
			}
			if got := m.Header.Get("List-Unsubscribe-Post"); (got == "List-Unsubscribe=One-Click") != post || (got == "") == post {
				t.Fatalf("List-Unsubscribe-Post = %q for %q", got, unsub)
			}
		}
		if fileName != "" {
			pm := parseMessage(t, raw)
			var names []string
			for _, p := range pm.Parts {
				if p.Disposition == "attachment" {
					names = append(names, p.FileName, p.Name)
				}
			}
			if len(names) != 2 || names[0] != fileName || names[1] != fileName {
				t.Fatalf("file name back = %q, want %q twice", names, fileName)
			}
		}
	})
}
