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

// FuzzBuild checks properties of every message built from a valid request:
// net/mail parses it; it has no header field the request did not ask for
// (no header injection through any field); the recipients and the subject
// come back unchanged; Bcc never appears.
func FuzzBuild(f *testing.F) {
	f.Add("a@example.com", "Jan <b@example.com>", "hidden@example.com", "Jan Kowalski", polish, "body", "X-Tag", "v", "plik.txt", false)
	f.Add(`"Kowalski, Jan" <jan@example.com>;c@example.com`, "", "", "", "Re: x\r\nBcc: evil@example.com", "<p>hi</p>", "X-A", "b\nX-Injected: 1", "a\r\nb.txt", true)
	f.Add("a@example.com", "", "", "Ünïcödé \"quoted\"", "=?UTF-8?q?not_really?=", "", "List-Unsubscribe", "<mailto:u@example.com>", "=?utf-8?q?x?=.pdf", true)
	f.Fuzz(func(t *testing.T, to, cc, bcc, fromName, subject, body, hName, hValue, fileName string, isHTML bool) {
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
		if req.Validate() != nil {
			return // only valid requests are built
		}
		env, err := Build(req, BuildOptions{})
		if err != nil {
			t.Fatalf("Build of a valid request failed: %v", err)
		}
		var buf bytes.Buffer
		if _, err := env.Msg.WriteTo(&buf); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
		m, err := mail.ReadMessage(&buf)
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
			t.Fatalf("header %q appeared without being asked for (request headers %q)", key, req.Headers)
		}
		if len(m.Header["Bcc"]) > 0 {
			t.Fatal("Bcc header written")
		}
		for _, f := range []struct {
			key  string
			list schema.AddressList
		}{{"To", req.To}, {"Cc", req.CC}} {
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
				if !strings.EqualFold(got[i].Address, want[i].Address) {
					t.Fatalf("%s[%d] = %q, want %q", f.key, i, got[i].Address, want[i].Address)
				}
			}
		}
		// Readers drop the white space around a header value (net/mail
		// does), so a subject is compared as a mail client shows it.
		if s, err := wordDecoder.DecodeHeader(m.Header.Get("Subject")); err != nil || s != strings.TrimSpace(subject) {
			t.Fatalf("Subject back = %q (%v), want %q", s, err, strings.TrimSpace(subject))
		}
	})
}
