package worker

import (
	"bytes"
	"encoding/base64"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

const polish = "Zażółć gęślą jaźń"

// render builds req and renders it as the transports send it: the bytes
// of DATA before dot-stuffing, DKIM signatures included.
func render(t testing.TB, req *schema.Request, opts BuildOptions) (*Envelope, []byte) {
	t.Helper()
	if err := req.Validate(); err != nil {
		t.Fatalf("test request is invalid: %v", err)
	}
	env, err := Build(req, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	raw, err := env.render()
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return env, raw
}

func addrStrings(l []*mail.Address) []string {
	var out []string
	for _, a := range l {
		out = append(out, a.Name+" <"+a.Address+">")
	}
	return out
}

// TestBuildEveryField builds a request that uses every field of §2 and
// parses the message back field by field.
func TestBuildEveryField(t *testing.T) {
	t.Parallel()
	png := []byte("\x89PNG\r\n\x1a\n fake image bytes \x00\x01\x02")
	pdf := []byte("%PDF-1.4 fake document")
	req := &schema.Request{
		Id:         "every-field-1",
		To:         schema.AddressList{`"Kowalski, Jan" <jan@example.com>`, "ola@example.com"},
		CC:         schema.AddressList{"Zofia Łęcka <zofia@example.com>"},
		Bcc:        schema.AddressList{"hidden@example.com"},
		From:       `"Sklep Żółw" <shop@example.com>`,
		ReplyTo:    schema.AddressList{"help@example.com"},
		Subject:    polish + " — zamówienie",
		Body:       `<p>Cześć <b>Jan</b>,</p><p><img src="cid:logo"> <a href="https://example.com/o/1">Zamówienie</a></p>`,
		IsHtml:     true,
		Importance: schema.ImportanceHigh,
		Headers:    map[string]string{"List-Unsubscribe": "<mailto:unsub@example.com>", "X-Campaign": "jesień-2026"},
		Metadata:   map[string]string{"order": "1"},
		Attachments: []schema.Attachment{
			{FileName: "logo.png", ContentId: "logo", ContentType: "image/png", ContentTransferEncoding: "base64", ContentData: base64.StdEncoding.EncodeToString(png)},
			{FileName: "faktura " + polish + ".pdf", ContentTransferEncoding: "base64", ContentData: base64.StdEncoding.EncodeToString(pdf)},
			{FileName: "notatka.txt", ContentData: "zwykły tekst " + polish},
		},
	}
	date := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	env, raw := render(t, req, BuildOptions{Date: date})
	pm := parseMessage(t, raw)

	if pm.Subject != req.Subject {
		t.Errorf("Subject = %q, want %q", pm.Subject, req.Subject)
	}
	if diff := cmp.Diff([]string{"Sklep Żółw <shop@example.com>"}, addrStrings(pm.addresses(t, "From"))); diff != "" {
		t.Errorf("From (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Kowalski, Jan <jan@example.com>", " <ola@example.com>"}, addrStrings(pm.addresses(t, "To"))); diff != "" {
		t.Errorf("To (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"Zofia Łęcka <zofia@example.com>"}, addrStrings(pm.addresses(t, "Cc"))); diff != "" {
		t.Errorf("Cc (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{" <help@example.com>"}, addrStrings(pm.addresses(t, "Reply-To"))); diff != "" {
		t.Errorf("Reply-To (-want +got):\n%s", diff)
	}
	if h := pm.Header.Get("Bcc"); h != "" || bytes.Contains(raw, []byte("hidden@example.com")) {
		t.Errorf("Bcc leaked into the message: header %q", h)
	}
	if diff := cmp.Diff([]string{"jan@example.com", "ola@example.com", "zofia@example.com", "hidden@example.com"}, env.To); diff != "" {
		t.Errorf("envelope recipients (-want +got):\n%s", diff)
	}
	if env.From != "shop@example.com" {
		t.Errorf("envelope sender = %q", env.From)
	}
	if got := pm.Header.Get("Message-Id"); got != "<every-field-1.jetmail@example.com>" {
		t.Errorf("Message-ID = %q", got)
	}
	if got, err := pm.Header.Date(); err != nil || !got.Equal(date) {
		t.Errorf("Date = %v, %v; want %v", got, err, date)
	}
	if !strings.EqualFold(pm.Header.Get("Importance"), "high") || pm.Header.Get("X-Priority") == "" || !strings.HasPrefix(pm.Header.Get("X-Priority"), "1") {
		t.Errorf("Importance = %q, X-Priority = %q", pm.Header.Get("Importance"), pm.Header.Get("X-Priority"))
	}
	if pm.Header.Get("List-Unsubscribe") != "<mailto:unsub@example.com>" {
		t.Errorf("List-Unsubscribe = %q", pm.Header.Get("List-Unsubscribe"))
	}
	if got, _ := wordDecoder.DecodeHeader(pm.Header.Get("X-Campaign")); got != "jesień-2026" {
		t.Errorf("X-Campaign = %q", got)
	}

	html := pm.part("text/html")
	text := pm.part("text/plain")
	if html == nil || text == nil {
		t.Fatalf("want text/plain and text/html parts, got %+v", pm.Parts)
	}
	if string(html.Body) != req.Body {
		t.Errorf("HTML body = %q", html.Body)
	}
	if !strings.Contains(html.Path, "multipart/alternative") || !strings.Contains(text.Path, "multipart/alternative") {
		t.Errorf("text and HTML are not alternatives: %s, %s", text.Path, html.Path)
	}
	if want := "Cześć Jan,\r\n\r\nZamówienie (https://example.com/o/1)"; string(text.Body) != want {
		t.Errorf("derived text = %q, want %q", text.Body, want)
	}
	if html.Params["charset"] != "UTF-8" && html.Params["charset"] != "utf-8" {
		t.Errorf("HTML charset = %q", html.Params["charset"])
	}

	byName := map[string]parsedPart{}
	for _, p := range pm.Parts {
		if p.FileName != "" {
			byName[p.FileName] = p
		}
	}
	logo, ok := byName["logo.png"]
	if !ok || logo.ContentID != "logo" || logo.Disposition != "inline" || !bytes.Equal(logo.Body, png) || logo.ContentType != "image/png" {
		t.Errorf("inline logo = %+v", logo)
	}
	if !strings.Contains(logo.Path, "multipart/related") {
		t.Errorf("inline image not in multipart/related: %s", logo.Path)
	}
	inv, ok := byName["faktura "+polish+".pdf"]
	if !ok || inv.Disposition != "attachment" || !bytes.Equal(inv.Body, pdf) || inv.ContentType != "application/pdf" {
		t.Errorf("pdf attachment = %+v (names: %v)", inv, keys(byName))
	}
	note, ok := byName["notatka.txt"]
	if !ok || string(note.Body) != "zwykły tekst "+polish {
		t.Errorf("text attachment = %+v", note)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestBuildPlainAndDefaults(t *testing.T) {
	t.Parallel()
	req := &schema.Request{Id: "p1", To: schema.AddressList{"a@example.com"}, Subject: polish, Body: polish + "\nline two"}
	if _, err := Build(req, BuildOptions{}); err == nil {
		t.Fatal("Build without any sender succeeded")
	}
	env, raw := render(t, req, BuildOptions{DefaultFrom: "noreply@example.org"})
	pm := parseMessage(t, raw)
	if env.From != "noreply@example.org" || pm.Subject != polish {
		t.Errorf("from %q subject %q", env.From, pm.Subject)
	}
	// The message ends with a CRLF, as SMTP delivers it.
	if len(pm.Parts) != 1 || pm.Parts[0].ContentType != "text/plain" || string(pm.Parts[0].Body) != polish+"\r\nline two\r\n" {
		t.Errorf("parts = %+v", pm.Parts)
	}
	for _, h := range []string{"Importance", "X-Priority", "Reply-To", "Cc"} {
		if v := pm.Header.Get(h); v != "" {
			t.Errorf("%s set to %q without being asked", h, v)
		}
	}
	// The same request builds the same Message-ID: retries keep it.
	env2, _ := render(t, req, BuildOptions{DefaultFrom: "noreply@example.org"})
	if env.MessageID != env2.MessageID {
		t.Errorf("Message-ID changed between builds: %s, %s", env.MessageID, env2.MessageID)
	}
}

func TestHTMLToText(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"<p>a</p><p>b</p>": "a\n\nb",
		"x<br>y<br/>z":     "x\ny\nz",
		"<style>p{}</style><script>x()</script>hi": "hi",
		`<a href="https://e.x">link</a>`:           "link (https://e.x)",
		`<a href="https://e.x">https://e.x</a>`:    "https://e.x",
		"<ul><li>one</li><li>two</li></ul>":        "- one\n- two",
		"&lt;tag&gt; &amp; &#x17c;":                "<tag> & ż",
		"  lots   of\n\n\n\n\nspace  ":             "lots of\n\nspace",
		// What regular expressions got wrong.
		"a<!-- <p>hidden</p> -->b":                                        "ab",
		"<!-- a > b -->shown<!---->":                                      "shown",
		`<a href="https://e.x/?q=a>b" title="x > y">go</a>`:               "go (https://e.x/?q=a>b)",
		`<img alt="a > b" src="x.png">after`:                              "after",
		`<p data-x=">">one</p><p>two</p>`:                                 "one\n\ntwo",
		"<script>if (a > b) { document.write('</p>x') }</script>kept":     "kept",
		"<STYLE>p > a { color: red }</STYLE><P>Upper</P>":                 "Upper",
		"<head><title>Title</title><body>Body text":                       "Body text",
		"<head><title>T</title></head><p>x</p>":                           "x",
		`<a href="cid:logo"><img src="cid:logo"> Logo</a>`:                "Logo",
		`<a href="mailto:a@b.pl">a@b.pl</a>`:                              "a@b.pl",
		`<a href="https://e.x/?a=1&amp;b=2"><b>bold</b> link</a>`:         "bold link (https://e.x/?a=1&b=2)",
		`<a href="https://e.x">unclosed`:                                  "unclosed (https://e.x)",
		"<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>": "a b\n\nc",
		"x&nbsp;&nbsp;y &copy; 2026":                                      "x y © 2026",
		"<div>a<p>b</p>c</div>":                                           "a\n\nb\n\nc",
		"<ol><li>one<li>two</ol>":                                         "- one\n- two",
	} {
		if got := htmlToText(in); got != want {
			t.Errorf("htmlToText(%q) = %q, want %q", in, got, want)
		}
	}
}
