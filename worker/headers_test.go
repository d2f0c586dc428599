package worker

import (
	"bytes"
	"encoding/base64"
	"mime"
	"net/mail"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/jetmail/jetmail/schema"
)

// rawField is one header field as written: its name and its lines without
// CRLF, the first one holding "Name:".
type rawField struct {
	Name  string
	Lines []string
}

var boundaryParam = regexp.MustCompile(`boundary="?([^";\r\n]+)"?`)

// rawHeaderFields returns the header fields of a raw message: the message's
// own and those of every MIME part, as they are written.
func rawHeaderFields(raw []byte) []rawField {
	delims := map[string]bool{}
	for _, m := range boundaryParam.FindAllSubmatch(raw, -1) {
		delims["--"+string(m[1])] = true
	}
	var fields []rawField
	inHeader := true
	for _, line := range strings.Split(string(raw), "\r\n") {
		switch {
		case !inHeader:
			inHeader = delims[line]
		case line == "":
			inHeader = false
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := &fields[len(fields)-1]
			f.Lines = append(f.Lines, line)
		default:
			name, _, _ := strings.Cut(line, ":")
			fields = append(fields, rawField{Name: name, Lines: []string{line}})
		}
	}
	return fields
}

var encodedWordCharset = regexp.MustCompile(`=\?([^?\s]*)\?[bBqQ]\?`)

// checkWireFormat checks what any message Build makes must satisfy, for
// the readers and for DKIM: every line ends with CRLF (no bare CR or LF,
// which the SMTP layer would change), no line is longer than 998
// characters, the first line of every header field holds the start of its
// value (no fold right after the colon), and every encoded word names its
// charset UTF-8.
func checkWireFormat(t testing.TB, raw []byte) {
	t.Helper()
	if n := bytes.Count(raw, []byte("\r\n")); bytes.Count(raw, []byte("\n")) != n || bytes.Count(raw, []byte("\r")) != n {
		t.Fatalf("bare CR or LF in the message:\n%q", raw)
	}
	for i, line := range strings.Split(string(raw), "\r\n") {
		if len(line) > hardLineLen {
			t.Fatalf("line %d is %d characters long: %.100q…", i+1, len(line), line)
		}
	}
	for _, f := range rawHeaderFields(raw) {
		_, first, ok := strings.Cut(f.Lines[0], ":")
		if !ok {
			t.Fatalf("header line without a colon: %q", f.Lines[0])
		}
		value := strings.TrimSpace(strings.Join(f.Lines[1:], ""))
		if strings.TrimLeft(first, " \t") == "" && value != "" {
			t.Fatalf("%s is folded right after the colon: %q", f.Name, f.Lines)
		}
		for _, l := range f.Lines {
			for _, m := range encodedWordCharset.FindAllStringSubmatch(l, -1) {
				if m[1] != "UTF-8" {
					t.Fatalf("%s: encoded word with charset %q, want UTF-8: %q", f.Name, m[1], l)
				}
			}
		}
	}
}

// checkLineLengths checks that every header line is at most 78 characters
// long unless it holds a single word that no fold can break (a long URL in
// an extra header, say).
func checkLineLengths(t testing.TB, raw []byte) {
	t.Helper()
	for _, f := range rawHeaderFields(raw) {
		for i, l := range f.Lines {
			if len(l) <= maxLineLen {
				continue
			}
			rest := strings.TrimLeft(l, " \t")
			if i == 0 {
				_, rest, _ = strings.Cut(l, ": ")
			}
			if strings.Contains(rest, " ") || strings.Contains(rest, "=?") {
				t.Errorf("%s: line of %d characters could have been folded: %q", f.Name, len(l), l)
			}
		}
	}
}

// decodedHeaders is what a reader sees in a message's headers.
type decodedHeaders struct {
	Subject   string
	Addresses map[string][][2]string // field → [display name, address]
	Headers   map[string]string      // extra header → value
	Files     [][3]string            // [Content-Disposition filename, Content-Type name, Content-ID]
}

// wantHeaders is what a reader must see in the message built from req.
func wantHeaders(t testing.TB, req *schema.Request, defaultFrom string) decodedHeaders {
	t.Helper()
	d := decodedHeaders{Subject: req.Subject, Addresses: map[string][][2]string{}, Headers: map[string]string{}}
	from := req.From
	if from == "" {
		from = defaultFrom
	}
	a, err := schema.ParseAddress(from)
	if err != nil {
		t.Fatal(err)
	}
	d.Addresses["From"] = [][2]string{{a.Name, a.Address}}
	for field, l := range map[string]schema.AddressList{"To": req.To, "Cc": req.CC, "Reply-To": req.ReplyTo} {
		addrs, err := l.Addresses()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			d.Addresses[field] = append(d.Addresses[field], [2]string{a.Name, a.Address})
		}
	}
	for k, v := range req.Headers {
		d.Headers[k] = v
	}
	for _, at := range req.Attachments {
		d.Files = append(d.Files, [3]string{at.FileName, at.FileName, at.ContentId})
	}
	return d
}

// goHeaders reads raw with net/mail, mime.WordDecoder and
// mime.ParseMediaType, as a Go program would.
func goHeaders(t testing.TB, raw []byte, extra []string) decodedHeaders {
	t.Helper()
	pm := parseMessage(t, raw)
	d := decodedHeaders{Subject: pm.Subject, Addresses: map[string][][2]string{}, Headers: map[string]string{}}
	for _, field := range []string{"From", "To", "Cc", "Reply-To"} {
		for _, a := range pm.addresses(t, field) {
			d.Addresses[field] = append(d.Addresses[field], [2]string{a.Name, a.Address})
		}
	}
	for _, k := range extra {
		v, err := wordDecoder.DecodeHeader(pm.Header.Get(k))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		d.Headers[k] = v
	}
	for _, p := range pm.Parts {
		if p.Disposition != "" {
			d.Files = append(d.Files, [3]string{p.FileName, p.Name, p.ContentID})
		}
	}
	return d
}

// richRequest is the message of the issue: Polish everywhere a request can
// put text into a header.
func richRequest() *schema.Request {
	return &schema.Request{
		Id:      "rich-1",
		From:    `"Zażółć Gęślą" <a@x.pl>`,
		To:      schema.AddressList{`"Zażółć Gęślą" <a@x.pl>`, `"Kowalski, Jan" <jan@example.com>`, "ola@example.com"},
		CC:      schema.AddressList{"Zofia Łęcka <zofia@example.com>", `"Bérénice-Amélie Rosemonde Dûbois-Bénard" <rose@example.com>`},
		ReplyTo: schema.AddressList{`"Biuro Obsługi Klienta — Sklep Żółw" <pomoc@example.com>`},
		Subject: "Zażółć gęślą jaźń — ąćęłńóśźż ĄĆĘŁŃÓŚŹŻ ✓",
		Body:    `<p>Dzień dobry <b>Janie</b>,</p><p><img src="cid:logo"> faktura w załączniku.</p>`,
		IsHtml:  true,
		Headers: map[string]string{"X-Campaign": "jesień-2026 ✓ zażółć", "X-Order-Ref": "ZAM/2026/11/000123"},
		Attachments: []schema.Attachment{
			{FileName: "logo żółw.png", ContentId: "logo", ContentType: "image/png", ContentTransferEncoding: "base64", ContentData: base64.StdEncoding.EncodeToString([]byte("\x89PNG fake"))},
			{FileName: "Faktura żółć 2026 — ąę.pdf", ContentData: "%PDF-1.4 fake"},
			{FileName: "Bardzo długa nazwa załącznika — zestawienie zamówień za listopad 2026, dział sprzedaży (wersja ostateczna, poprawiona).pdf", ContentData: "%PDF-1.4 fake"},
		},
	}
}

// trickyRequests use everything that is easy to get wrong in headers: white
// space at the ends and in runs, text that looks like an encoded word,
// quotes and backslashes, emoji and CJK, long words, and names and values
// longer than any line.
func trickyRequests() []*schema.Request {
	longPolish := strings.Repeat("Zażółć gęślą jaźń, ", 20) + "koniec"
	longASCII := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 30) + "End"
	return []*schema.Request{
		{
			Id: "long-subjects", To: schema.AddressList{"a@example.com"}, From: "s@example.com",
			Subject: longPolish,
			Headers: map[string]string{
				"X-Long-Ascii":  longASCII,
				"X-Long-Polish": longPolish,
				"X-Long-Token":  strings.Repeat("x", 1200),
				"X-Url":         "<https://example.com/a/very/long/path/that/does/not/fit/on/one/line/at/all?x=1&y=2>",
			},
			Body: "b",
		},
		{
			Id: "white-space", From: `" Jan " <j@example.com>`,
			To:      schema.AddressList{`"Jan  Kowalski" <a@example.com>`, `"Tab	Name" <b@example.com>`, `"a\"b\\c" <c@example.com>`},
			Subject: "  two leading, two trailing  ",
			Headers: map[string]string{"X-Runs": "a  b   c", "X-Lead": " lead", "X-Tab": "a\tb"},
			Body:    "b",
			Attachments: []schema.Attachment{
				{FileName: " leading space.txt", ContentData: "x"},
				{FileName: "two  spaces.txt", ContentData: "x"},
				{FileName: `my "quoted" file.txt`, ContentData: "x"},
			},
		},
		{
			Id: "looks-encoded", From: `"=?utf-8?q?not_a_word?=" <s@example.com>`,
			To:      schema.AddressList{"Łukasz =?x?= <a@example.com>"},
			Subject: "=?UTF-8?q?not_really?= and _under_score_ a?b=c",
			Headers: map[string]string{"X-Q": "=?utf-8?B?eA==?="},
			Body:    "b",
			Attachments: []schema.Attachment{
				{FileName: "=?utf-8?q?x?=.pdf", ContentData: "x"},
				{FileName: "100% a;b (1).txt", ContentData: "x"},
			},
		},
		{
			Id: "scripts", From: "日本 太郎 <taro@example.jp>",
			To:      schema.AddressList{"👍🏽 Family 👨‍👩‍👧 <f@example.com>", "Ørsted Ærø Åse <o@example.com>"},
			Subject: "日本語の件名です。とても長い件名が複数の符号化された単語に分割されます。👍🏽👨‍👩‍👧",
			Body:    "b",
			Attachments: []schema.Attachment{
				{FileName: "報告書 2026年11月.xlsx", ContentData: "x"},
				{FileName: strings.Repeat("raport-", 30) + "2026.csv", ContentData: "x"},
			},
		},
	}
}

func extraHeaderNames(req *schema.Request) []string {
	var out []string
	for k := range req.Headers {
		out = append(out, k)
	}
	return out
}

// TestBuildHeadersReadBack checks that every header Build writes from the
// request reads back in Go exactly as the request gave it, and the form of
// the lines: folds only after the first word, UTF-8 in every encoded word,
// lines of 78 characters where a fold can make them so.
func TestBuildHeadersReadBack(t *testing.T) {
	t.Parallel()
	for _, req := range append([]*schema.Request{richRequest()}, trickyRequests()...) {
		t.Run(req.Id, func(t *testing.T) {
			t.Parallel()
			_, raw := render(t, req, BuildOptions{})
			checkWireFormat(t, raw)
			checkLineLengths(t, raw)
			want := wantHeaders(t, req, "")
			got := goHeaders(t, raw, extraHeaderNames(req))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("headers read back with net/mail (-want +got):\n%s\n%s", diff, raw)
			}
		})
	}
}

// TestBuildHeaderLines pins the form of the rich message's header lines.
func TestBuildHeaderLines(t *testing.T) {
	t.Parallel()
	_, raw := render(t, richRequest(), BuildOptions{})
	for _, l := range strings.Split(string(raw[:bytes.Index(raw, []byte("\r\n\r\n"))]), "\r\n") {
		if len(l) > maxLineLen {
			t.Errorf("header line of %d characters: %q", len(l), l)
		}
	}
	fields := rawHeaderFields(raw)
	count := map[string]int{}
	for _, f := range fields {
		count[strings.ToLower(f.Name)]++
	}
	// One of each, and go-mail added no Message-ID of its own.
	for _, name := range []string{"from", "to", "cc", "reply-to", "subject", "date", "message-id", "mime-version"} {
		if count[name] != 1 {
			t.Errorf("%d %s fields, want 1", count[name], name)
		}
	}
	if !bytes.Contains(raw, []byte("\r\nMessage-ID: <rich-1.jetmail@x.pl>\r\n")) {
		t.Errorf("no Message-ID line with the derived id:\n%s", raw)
	}
	if !bytes.Contains(raw, []byte("\r\nSubject: =?UTF-8?")) {
		t.Errorf("the subject's first encoded word is not on its own line:\n%s", raw)
	}
	// A long Message-ID stays on its line too.
	long := &schema.Request{Id: strings.Repeat("a", 128), To: schema.AddressList{"b@example.com"}, From: "c@example.com"}
	_, raw = render(t, long, BuildOptions{})
	checkWireFormat(t, raw)
	if !bytes.Contains(raw, []byte("\r\nMessage-ID: <"+long.Id+".jetmail@example.com>\r\n")) {
		t.Errorf("long Message-ID not on one line:\n%s", raw)
	}
}

func TestHeaderEncodingUnits(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, want string
	}{
		{"Subject", "Hello", "Hello"},
		{"Subject", "", ""},
		{"Subject", "Zażółć", "=?UTF-8?B?WmHFvMOzxYLEhw==?="},        // B is shorter
		{"Subject", "Café au lait", "=?UTF-8?Q?Caf=C3=A9_au_lait?="}, // Q is shorter
		{"Subject", " x", "=?UTF-8?Q?_x?="},
		{"Subject", "a=?b", "=?UTF-8?Q?a=3D=3Fb?="},
		{"Subject", strings.Repeat("word ", 20) + "end", "word word word word word word word word word word word word word word\r\n word word word word word word end"},
	} {
		if got := textValue(tc.name, tc.in); got != tc.want {
			t.Errorf("textValue(%q, %q) =\n%q, want\n%q", tc.name, tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		want string
	}{
		{"Jan Kowalski", `"Jan Kowalski" <a@b.pl>`},
		{"Zażółć Gęślą", "=?UTF-8?B?WmHFvMOzxYLEhyBHxJnFm2zEhQ==?= <a@b.pl>"},
		{"Jan Łęcki", "Jan =?UTF-8?B?xYHEmWNraQ==?= <a@b.pl>"},
		{"Anne-Françoise Roy", "=?UTF-8?Q?Anne-Fran=C3=A7oise?= Roy <a@b.pl>"},
		{"", "<a@b.pl>"},
	} {
		if got := addressValue("From", []*mail.Address{{Name: tc.name, Address: "a@b.pl"}}); got != tc.want {
			t.Errorf("addressValue(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct{ file, want string }{
		{"a.pdf", "attachment; filename=a.pdf"},
		{"a b.pdf", `attachment; filename="a b.pdf"`},
		{"ż.pdf", "attachment; filename*=UTF-8''%C5%BC.pdf"},
	} {
		if got := fileParams("Content-Disposition", "attachment", nil, "filename", tc.file); got != tc.want {
			t.Errorf("fileParams(%q) = %q, want %q", tc.file, got, tc.want)
		}
		_, params, err := mime.ParseMediaType(tc.want)
		if err != nil || params["filename"] != tc.file {
			t.Errorf("ParseMediaType(%q) = %q, %v", tc.want, params["filename"], err)
		}
	}
}
