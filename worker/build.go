package worker

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"mime"
	"net/mail"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"
	"golang.org/x/net/html"

	"github.com/jetmail/jetmail/config"

	"github.com/jetmail/jetmail/schema"
)

// Envelope is one message ready to be sent: the SMTP envelope and the
// rendered go-mail message.
type Envelope struct {
	// ID is the request's Id.
	ID string
	// Connection is the name of the SMTP connection to send through.
	Connection string
	// From is the envelope sender (MAIL FROM), a bare address.
	From string
	// To is every envelope recipient (RCPT TO), Bcc included, as bare
	// addresses without duplicates.
	To []string
	// MessageID is the Message-ID header's value without angle brackets.
	MessageID string
	// Msg is the message itself. Msg.WriteTo writes it without DKIM
	// signatures: the transports send what render returns, which has them.
	Msg *gomail.Msg

	dkim *dkimSigning // nil: not signed
	raw  []byte       // Msg rendered (and signed), by render
	// part is, for one of the one-recipient copies of a one-click
	// message, its number from 1 (the outbox names it <Id>.<part>.eml);
	// 0 for a message sent once.
	part int

	// stop, when set, is asked right before the transaction begins
	// (after waiting for the rate limit and a session): true means the
	// message was cancelled meanwhile, and Send returns errCancelled
	// without sending.
	stop func() bool
}

// render returns the message as it goes over the wire (before
// dot-stuffing), with its DKIM signatures, rendering and signing it on the
// first call.
func (e *Envelope) render() ([]byte, error) {
	if e.raw == nil {
		var buf bytes.Buffer
		if _, err := e.Msg.WriteTo(&buf); err != nil {
			return nil, fmt.Errorf("render message: %w", err)
		}
		// go-mail ends a single-part message where its body ends; SMTP
		// would add the CRLF after signing, so add it here and send
		// exactly the bytes that were signed.
		if !bytes.HasSuffix(buf.Bytes(), []byte("\r\n")) {
			buf.WriteString("\r\n")
		}
		raw := buf.Bytes()
		if e.dkim != nil {
			signed, err := e.dkim.sign(raw, time.Now())
			if err != nil {
				return nil, err
			}
			raw = signed
		}
		e.raw = raw
	}
	return e.raw, nil
}

// BuildOptions are the settings of Build that do not come from the request.
type BuildOptions struct {
	// DefaultFrom is the sender when the request has no From.
	DefaultFrom string
	// Date is the Date header; the worker passes the time the request was
	// first published, so that the message is the same on every attempt.
	// Zero means now.
	Date time.Time
	// DKIM signs the message with the connection's keys for the sender's
	// domain, if it has any (see DKIMSigner); nil signs nothing.
	DKIM *DKIMSigner
	// OneClickURL is jetmail's one-click unsubscribe URL for the message's
	// recipient, {public-url}/v1/unsubscribe/{token} (contract §9), for a
	// request with "Unsubscribe": true. The token names one person, so a
	// caller builds one message per recipient for such a request. Empty
	// makes Build fail for it with ErrOneClickNotConfigured; requests
	// without Unsubscribe: true ignore it.
	OneClickURL string
}

// errNoSender is returned by Build when neither the request nor the
// connection names a sender.
var errNoSender = config.ErrNoSender

// ErrOneClickNotConfigured is returned (wrapped) by Build for a request
// with "Unsubscribe": true when BuildOptions.OneClickURL is empty: the
// worker has no one-click endpoint until --public-url and
// --unsubscribe-secret-file are set.
var ErrOneClickNotConfigured = errors.New(`"Unsubscribe": true needs jetmail's one-click endpoint: configure --public-url and --unsubscribe-secret-file`)

// Build renders req as a MIME message with go-mail: display names and UTF-8
// subjects (RFC 2047), HTML with a plain-text alternative, attachments and
// inline parts with Content-ID, file names in RFC 2231, Importance and
// X-Priority, Reply-To, the extra headers, a Message-ID derived from the Id
// (so the same on every retry) and Date. Every header field that carries
// request text reads back exactly as the request gave it (see textValue,
// addressValue and fileParams). When opts.DKIM has keys for the sender's
// domain, the message is signed as it is rendered for the transport. req
// must have passed Validate; Build's errors then only concern the sender.
func Build(req *schema.Request, opts BuildOptions) (*Envelope, error) {
	fromStr := req.From
	if fromStr == "" {
		fromStr = opts.DefaultFrom
	}
	if fromStr == "" {
		return nil, errNoSender
	}
	from, err := schema.ParseAddress(fromStr)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	m := gomail.NewMsg(gomail.WithCharset(gomail.CharsetUTF8), gomail.WithNoDefaultUserAgent())
	env := &Envelope{ID: req.Id, Connection: req.Connection, From: from.Address, Msg: m}
	if domain, keys := opts.DKIM.keysFor(from.Address); len(keys) > 0 {
		env.dkim = &dkimSigning{signer: opts.DKIM, domain: domain, keys: keys}
	}
	// The address fields are preformatted (addressValue), not go-mail's
	// address headers, which go-mail would write with net/mail's encoding
	// and its own folding.
	m.SetGenHeaderPreformatted("From", addressValue("From", []*mail.Address{from}))
	seen := map[string]bool{}
	for _, l := range []struct {
		list   schema.AddressList
		header gomail.Header // empty: not written (Bcc)
	}{{req.To, "To"}, {req.CC, "Cc"}, {req.Bcc, ""}} {
		addrs, err := l.list.Addresses()
		if err != nil {
			return nil, err
		}
		if len(addrs) > 0 && l.header != "" {
			m.SetGenHeaderPreformatted(l.header, addressValue(string(l.header), addrs))
		}
		for _, a := range addrs {
			if k := strings.ToLower(a.Address); !seen[k] {
				seen[k] = true
				env.To = append(env.To, a.Address)
			}
		}
	}
	if len(req.ReplyTo) > 0 {
		addrs, err := req.ReplyTo.Addresses()
		if err != nil {
			return nil, err
		}
		m.SetGenHeaderPreformatted("Reply-To", addressValue("Reply-To", addrs))
	}
	m.SetGenHeaderPreformatted(gomail.HeaderSubject, textValue(string(gomail.HeaderSubject), req.Subject))
	date := opts.Date
	if date.IsZero() {
		date = time.Now()
	}
	m.SetDateWithValue(date)
	env.MessageID = messageID(req.Id, from.Address)
	// A Message-ID longer than about 60 characters would be folded by
	// go-mail before its first word; so it is preformatted too. The
	// valueless generic header keeps go-mail from adding a random
	// Message-ID of its own (msg.go, addDefaultHeader) and writes nothing
	// (msgwriter.go, writeHeader); TestBuildHeaderLines checks both.
	m.SetGenHeader(gomail.HeaderMessageID)
	m.SetGenHeaderPreformatted(gomail.HeaderMessageID, "<"+env.MessageID+">")
	switch req.Importance {
	case schema.ImportanceHigh:
		m.SetImportance(gomail.ImportanceHigh)
	case schema.ImportanceLow:
		m.SetImportance(gomail.ImportanceLow)
	}
	m.SetUserAgent("jetmail")
	for _, name := range slices.Sorted(maps.Keys(req.Headers)) {
		m.SetGenHeaderPreformatted(gomail.Header(name), textValue(name, req.Headers[name]))
	}
	if err := setUnsubscribe(m, req.Unsubscribe, opts.OneClickURL); err != nil {
		return nil, err
	}

	if req.IsHtml {
		text := req.TextBody
		if text == "" {
			text = htmlToText(req.Body)
		}
		m.SetBodyString(gomail.TypeTextPlain, text)
		m.AddAlternativeString(gomail.TypeTextHTML, req.Body)
	} else {
		m.SetBodyString(gomail.TypeTextPlain, req.Body)
	}

	for i := range req.Attachments {
		a := &req.Attachments[i]
		data, err := a.Content()
		if err != nil {
			return nil, fmt.Errorf("attachments[%d]: %w", i, err)
		}
		ct := a.ContentType
		if ct == "" {
			ct = mime.TypeByExtension(strings.ToLower(filepath.Ext(a.FileName)))
		}
		if ct == "" {
			ct = "application/octet-stream"
		}
		fileOpts := []gomail.FileOption{
			gomail.WithFileContentType(gomail.ContentType(ct)),
			fileHeaders(a.FileName, ct, a.ContentId),
		}
		if a.ContentId != "" {
			err = m.EmbedReader(a.FileName, bytes.NewReader(data), fileOpts...)
		} else {
			err = m.AttachReader(a.FileName, bytes.NewReader(data), fileOpts...)
		}
		if err != nil {
			return nil, fmt.Errorf("attachments[%d]: %w", i, err)
		}
	}
	return env, nil
}

// Header fields are written by Build itself, not by go-mail, wherever their
// value comes from the request: go-mail folds a value before its first word
// when that word is long ("Subject:" CRLF " =?UTF-8?q?…"), which readers
// such as Python's email package decode with a leading space, and net/mail
// encodes display names with a lower-case "utf-8". The rules below make
// every such field decode back to exactly what the request gave.
const (
	// maxLineLen is the line length RFC 5322 §2.1.1 asks headers to keep
	// to (SHOULD), without the CRLF.
	maxLineLen = 78
	// hardLineLen is the length no line may pass (MUST).
	hardLineLen = 998
	// maxWordLen is the longest encoded word (RFC 2047 §2).
	maxWordLen = 75
	// minWordRoom is the room in which an encoded word holds at least one
	// character of any kind: the 12 characters of "=?UTF-8?Q?" and "?=",
	// and 12 for the Q encoding of a four-byte character.
	minWordRoom = 24
)

// headerValue assembles the value of a header field as go-mail writes a
// preformatted one ("Name: " + value + CRLF) from tokens: one space
// separates two tokens, or a fold (CRLF and a space) when the next token
// would make the line longer than maxLineLen. The first token always goes on
// the field's own line, so that no reader sees a value starting with white
// space. Readers unfold CRLF SP back to the single space it replaced.
type headerValue struct {
	b       strings.Builder
	col     int  // length of the current line
	empty   bool // no token written yet
	longest int  // length of the longest line
}

func newHeaderValue(name string) *headerValue {
	return &headerValue{col: len(name) + len(": "), empty: true, longest: len(name) + len(": ")}
}

// add appends one token.
func (h *headerValue) add(tok string) {
	switch {
	case h.empty:
		h.empty = false
	case h.col+1+len(tok) > maxLineLen:
		h.b.WriteString("\r\n ")
		h.col = 1
	default:
		h.b.WriteByte(' ')
		h.col++
	}
	h.b.WriteString(tok)
	h.col += len(tok)
	h.longest = max(h.longest, h.col)
}

// room is the length of the longest token that add puts on the current
// line.
func (h *headerValue) room() int {
	if h.empty {
		return maxLineLen - h.col
	}
	return maxLineLen - h.col - 1
}

// addEncoded appends s as RFC 2047 encoded words, each holding whole
// characters and as long as the line has room for, at most maxWordLen.
// Readers drop the white space between two encoded words, so s comes back
// exactly as it was, spaces included. phrase selects the characters left
// as they are in Q encoding: those RFC 2047 §5(3) allows in a display name,
// or, for unstructured text, all printable ASCII but "=", "?" and "_".
func (h *headerValue) addEncoded(s string, phrase bool) {
	enc := chooseEncoding(s, phrase)
	for len(s) > 0 {
		room := min(h.room(), maxWordLen)
		switch {
		case h.empty:
			room = max(room, minWordRoom) // longer than maxLineLen for a very long field name
		case room < minWordRoom || enc.fit(s, room) < len(s) && enc.fit(s, maxWordLen) == len(s):
			// Fold (add does it) rather than start a word that is short
			// or one that splits what fits whole in a word of its own:
			// each boundary between encoded words is a place where a
			// careless reader adds a space.
			room = maxWordLen
		}
		n := enc.fit(s, room)
		h.add(enc.word(s[:n]))
		s = s[n:]
	}
}

func (h *headerValue) String() string { return h.b.String() }

// wordEncoding is the Q or B encoding of RFC 2047 with the charset UTF-8.
type wordEncoding struct {
	b      bool // B (base64); else Q
	phrase bool // Q in a display name: fewer characters stay as they are
}

const wordOverhead = len("=?UTF-8?Q?") + len("?=")

// chooseEncoding picks the encoding that makes s shorter.
func chooseEncoding(s string, phrase bool) wordEncoding {
	q := wordEncoding{phrase: phrase}
	if q.qLen(s) <= base64.StdEncoding.EncodedLen(len(s)) {
		return q
	}
	return wordEncoding{b: true}
}

// qLiteral reports whether c stays as it is in Q encoding.
func (e wordEncoding) qLiteral(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case e.phrase:
		return c == '!' || c == '*' || c == '+' || c == '-' || c == '/'
	default:
		return '!' <= c && c <= '~' && c != '=' && c != '?' && c != '_'
	}
}

func (e wordEncoding) qLen(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		if e.qLiteral(s[i]) || s[i] == ' ' {
			n++
		} else {
			n += 3
		}
	}
	return n
}

// fit returns how many bytes of s, in whole characters, fit in an encoded
// word of at most room characters; at least one character. When s does not
// fit whole, the word ends before a space in its second half if there is
// one, so that a reader that wrongly keeps the white space between two
// encoded words shows a doubled space rather than a split word.
func (e wordEncoding) fit(s string, room int) int {
	n, space := 0, 0
	for n < len(s) {
		_, size := utf8.DecodeRuneInString(s[n:])
		var l int
		if e.b {
			l = base64.StdEncoding.EncodedLen(n + size)
		} else {
			l = e.qLen(s[:n+size])
		}
		if n > 0 && wordOverhead+l > room {
			if space > 0 && space >= n/2 {
				return space
			}
			return n
		}
		if s[n] == ' ' && n > 0 {
			space = n
		}
		n += size
	}
	return n
}

// word returns s as one encoded word.
func (e wordEncoding) word(s string) string {
	var b strings.Builder
	if e.b {
		b.WriteString("=?UTF-8?B?")
		b.WriteString(base64.StdEncoding.EncodeToString([]byte(s)))
	} else {
		const hex = "0123456789ABCDEF"
		b.WriteString("=?UTF-8?Q?")
		for i := 0; i < len(s); i++ {
			switch c := s[i]; {
			case c == ' ':
				b.WriteByte('_')
			case e.qLiteral(c):
				b.WriteByte(c)
			default:
				b.WriteByte('=')
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0x0f])
			}
		}
	}
	b.WriteString("?=")
	return b.String()
}

// textValue formats s as the value of the unstructured field name
// (RFC 5322 §3.2.5: Subject and the request's extra headers). Plain ASCII
// that readers give back unchanged is written as it is, folded at single
// spaces; anything else (non-ASCII or control characters, white space at
// either end, "=?" that would read as an encoded word, a word too long for
// any line) as encoded words.
func textValue(name, s string) string {
	if plainText(s) {
		h := newHeaderValue(name)
		for _, tok := range foldableWords(s) {
			h.add(tok)
		}
		if h.longest <= hardLineLen {
			return h.String()
		}
	}
	h := newHeaderValue(name)
	h.addEncoded(s, false)
	return h.String()
}

// plainText reports whether s reads back the same written as it is in an
// unstructured field: printable ASCII and spaces, no space at either end
// (readers drop it) and no "=?".
func plainText(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return !strings.HasPrefix(s, " ") && !strings.HasSuffix(s, " ") && !strings.Contains(s, "=?")
}

// foldableWords splits s at the single spaces in it (those between two
// characters that are not white space), where a fold may replace the
// space; runs of white space stay inside a word, since unfolding would
// reduce them to one space.
func foldableWords(s string) []string {
	var words []string
	start := 0
	for i := 1; i < len(s)-1; i++ {
		if s[i] == ' ' && !isWSP(s[i-1]) && !isWSP(s[i+1]) {
			words = append(words, s[start:i])
			start = i + 1
		}
	}
	return append(words, s[start:])
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' }

// addressValue formats addrs as the value of the address field name
// (From, To, Cc, Reply-To): "display name" <addr-spec>, comma-separated,
// folded between the tokens.
func addressValue(name string, addrs []*mail.Address) string {
	h := newHeaderValue(name)
	for i, a := range addrs {
		h.addPhrase(a.Name)
		// net/mail formats the addr-spec, quoting a local part that
		// needs it; without a name that is "<local@domain>".
		spec := (&mail.Address{Address: a.Address}).String()
		if i < len(addrs)-1 {
			spec += ","
		}
		h.add(spec)
	}
	return h.String()
}

// addPhrase appends a display name. Printable ASCII becomes a quoted string,
// which readers give back exactly, white space included. Anything else is
// encoded, word by word: plain ASCII words stay as they are and each run of
// other words becomes encoded words with their spaces inside. That keeps a
// long name exact even in readers (Python's email package before 3.14,
// CPython issue 128110) that put a space between two adjacent encoded words
// of a display name, as long as no run of non-ASCII words needs more than
// one encoded word. A name with unusual white space (at either end, a run,
// a tab) is encoded whole.
func (h *headerValue) addPhrase(name string) {
	switch {
	case name == "":
		return
	case quotable(name):
		var b strings.Builder
		b.WriteByte('"')
		for i := 0; i < len(name); i++ {
			if name[i] == '"' || name[i] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(name[i])
		}
		b.WriteByte('"')
		for _, tok := range foldableWords(b.String()) {
			h.add(tok)
		}
		return
	case strings.HasPrefix(name, " ") || strings.HasSuffix(name, " ") || strings.Contains(name, "  ") || strings.ContainsAny(name, "\t"):
		h.addEncoded(name, true)
		return
	}
	words := strings.Split(name, " ")
	for i := 0; i < len(words); {
		if atom(words[i]) {
			h.add(words[i])
			i++
			continue
		}
		j := i + 1
		for j < len(words) && !atom(words[j]) {
			j++
		}
		h.addEncoded(strings.Join(words[i:j], " "), true)
		i = j
	}
}

// quotable reports whether name can be written as a quoted string: printable
// ASCII and tabs, and no "=?", which some readers (Python's) decode even
// inside quotes.
func quotable(name string) bool {
	for i := 0; i < len(name); i++ {
		if (name[i] < ' ' || name[i] > '~') && name[i] != '\t' {
			return false
		}
	}
	return !strings.Contains(name, "=?")
}

// atom reports whether w is an RFC 5322 atom that is not an encoded word:
// letters, digits and the few symbols that need no quoting.
func atom(w string) bool {
	if w == "" || strings.Contains(w, "=?") {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0) {
			return false
		}
	}
	return true
}

// fileParams formats the value of a part's Content-Type or
// Content-Disposition field (name is the field's name): base (the media
// type or the disposition), then its parameters with key=file last. A
// parameter that is plain ASCII and short is written as it is, quoted when
// it is not a token; any other is written as RFC 2231 percent-encoded UTF-8
// (the key*= form, charset UTF-8, no language), split into continuations
// (key*0*, key*1*, …) of whole characters that keep each line within
// maxLineLen.
func fileParams(name, base string, params map[string]string, key, file string) string {
	h := newHeaderValue(name)
	var segs []string
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if k != key {
			segs = append(segs, paramSegments(k, params[k])...)
		}
	}
	segs = append(segs, paramSegments(key, file)...)
	h.add(base + ";")
	for i, s := range segs {
		if i < len(segs)-1 {
			s += ";"
		}
		h.add(s)
	}
	return h.String()
}

// paramSegments returns key=value as one or more parameters (RFC 2045,
// RFC 2231).
func paramSegments(key, value string) []string {
	const room = maxLineLen - len(" ") - len(";")
	if plainParam(value) {
		if tokenValue(value) && len(key)+1+len(value) <= room {
			return []string{key + "=" + value}
		}
		if len(key)+3+len(value) <= room {
			return []string{key + `="` + value + `"`}
		}
	}
	if s := key + "*=UTF-8''" + percentEncode(value); len(s) <= room {
		return []string{s}
	}
	var segs []string
	for i := 0; value != ""; i++ {
		prefix := key + "*" + strconv.Itoa(i) + "*="
		if i == 0 {
			prefix += "UTF-8''"
		}
		n, l := 0, len(prefix)
		for n < len(value) {
			_, size := utf8.DecodeRuneInString(value[n:])
			el := len(percentEncode(value[n : n+size]))
			if n > 0 && l+el > room {
				break
			}
			n, l = n+size, l+el
		}
		segs = append(segs, prefix+percentEncode(value[:n]))
		value = value[n:]
	}
	return segs
}

// plainParam reports whether value can be written as it is, in quotes if
// need be: printable ASCII without quotes, backslashes, "=?" or white space
// at either end or in runs.
func plainParam(value string) bool {
	for i := 0; i < len(value); i++ {
		if c := value[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			return false
		}
	}
	return value != "" && !strings.HasPrefix(value, " ") && !strings.HasSuffix(value, " ") &&
		!strings.Contains(value, "  ") && !strings.Contains(value, "=?")
}

// tokenValue reports whether value is an RFC 2045 token.
func tokenValue(value string) bool {
	for i := 0; i < len(value); i++ {
		if c := value[i]; c <= ' ' || c > '~' || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0 {
			return false
		}
	}
	return value != ""
}

// percentEncode encodes s as the value of an RFC 2231 extended parameter:
// attribute characters as they are, every other byte as %XX.
func percentEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0x0f])
	}
	return b.String()
}

// fileHeaders sets the part headers that name a file: Content-Type with a
// name parameter and Content-Disposition with a filename parameter (see
// fileParams), and Content-ID for inline parts.
func fileHeaders(name, contentType, contentID string) gomail.FileOption {
	return func(f *gomail.File) {
		mt, params, err := mime.ParseMediaType(contentType)
		if err != nil {
			mt, params = "application/octet-stream", nil
		}
		f.Header.Set("Content-Type", fileParams("Content-Type", mt, params, "name", name))
		disp := "attachment"
		if contentID != "" {
			disp = "inline"
			f.Header.Set("Content-ID", "<"+contentID+">")
		}
		f.Header.Set("Content-Disposition", fileParams("Content-Disposition", disp, nil, "filename", name))
	}
}

// setUnsubscribe writes the List-Unsubscribe fields a request asks for
// (RFC 2369, RFC 8058): List-Unsubscribe with the URL in angle brackets,
// and List-Unsubscribe-Post: List-Unsubscribe=One-Click for an https: URL
// and for jetmail's own endpoint (oneClickURL), which OneClick requires.
// Validate has checked u.URL: RFC 3986 characters, so it goes in as it is,
// on one line when it fits in 998 characters (an encoded word would break
// the field, and not every reader ignores a fold inside the brackets).
func setUnsubscribe(m *gomail.Msg, u schema.Unsubscribe, oneClickURL string) error {
	url, post := u.URL, u.HTTPS()
	if u.OneClick {
		if oneClickURL == "" {
			return fmt.Errorf("unsubscribe: %w", ErrOneClickNotConfigured)
		}
		if !(hasPrefixFold(oneClickURL, "https://") || hasPrefixFold(oneClickURL, "http://")) ||
			strings.ContainsAny(oneClickURL, "<> \t\r\n") {
			return fmt.Errorf("unsubscribe: one-click URL %q is not an http(s) URL that can stand in a header", oneClickURL)
		}
		url, post = oneClickURL, true
	}
	if url == "" {
		return nil
	}
	value := "<" + url + ">"
	if len("List-Unsubscribe: ")+len(value) > hardLineLen {
		// Readers ignore white space inside the brackets (RFC 2369 §2):
		// fold a URL too long for any line.
		var b strings.Builder
		for n := maxLineLen - len("List-Unsubscribe: "); len(value) > n; n = maxLineLen - 1 {
			b.WriteString(value[:n] + "\r\n ")
			value = value[n:]
		}
		value = b.String() + value
	}
	m.SetGenHeaderPreformatted("List-Unsubscribe", value)
	if post {
		m.SetGenHeaderPreformatted("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
	}
	return nil
}

// hasPrefixFold reports whether s starts with the lower-case ASCII prefix
// in any case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// messageID derives the Message-ID from the Id and the sender's domain, so
// that every attempt of a message carries the same one.
func messageID(id, from string) string {
	domain := "jetmail.invalid"
	if at := strings.LastIndexByte(from, '@'); at >= 0 && at < len(from)-1 {
		domain = from[at+1:]
	}
	return id + ".jetmail@" + domain
}

// htmlToText derives the plain-text alternative of an HTML body with
// golang.org/x/net/html's tokenizer, so that comments, ">" inside
// attribute values and unclosed elements are read as a browser reads them:
// script, style, head, title and template are dropped; a link becomes
// "text (url)" (its text alone when the text is the address or the link
// is a cid: reference); br is a line break; the start and end of a block
// (p, div, h1-h6, table, tr, blockquote, pre, ul, ol, hr…) are a blank
// line; a list item starts a line with "- "; table cells are separated by
// a space; entities are decoded. Runs of spaces and tabs become one space,
// lines are trimmed and no more than one blank line is kept; the text's
// own line breaks stay.
func htmlToText(s string) string {
	var out, link strings.Builder
	var href string
	inLink := false
	skip, skipDepth := "", 0 // the element being dropped, and how deep
	w := &out
	z := html.NewTokenizer(strings.NewReader(s))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			break // io.EOF: the tokenizer takes any input
		}
		tok := z.Token()
		name := tok.Data
		if skip != "" {
			switch {
			case tt == html.StartTagToken && name == skip:
				skipDepth++
			case tt == html.EndTagToken && name == skip:
				skipDepth--
			case skip == "head" && tt == html.StartTagToken && name == "body":
				skipDepth = 0 // a head left open ends where the body starts
			}
			if skipDepth == 0 {
				skip = ""
			}
			continue
		}
		switch tt {
		case html.TextToken:
			w.WriteString(strings.ReplaceAll(tok.Data, "\u00a0", " "))
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			start := tt != html.EndTagToken
			switch name {
			case "script", "style", "head", "title", "template":
				if tt == html.StartTagToken {
					skip, skipDepth = name, 1
				}
			case "a":
				if inLink { // a link never holds another: close the first
					out.WriteString(linkText(link.String(), href))
					inLink, w = false, &out
				}
				if tt == html.StartTagToken {
					href, inLink, w = "", true, &link
					link.Reset()
					for _, a := range tok.Attr {
						if a.Key == "href" {
							href = strings.TrimSpace(a.Val)
						}
					}
				}
			case "br":
				w.WriteString("\n")
			case "li":
				if start {
					w.WriteString("\n- ")
				}
			case "td", "th":
				if !start {
					w.WriteString(" ")
				}
			case "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "blockquote", "pre", "ul", "ol",
				"hr", "section", "article", "header", "footer", "address", "dl", "dt", "dd", "figure", "form":
				w.WriteString("\n\n")
			}
		}
	}
	if inLink {
		out.WriteString(linkText(link.String(), href))
	}
	lines := strings.Split(strings.ReplaceAll(out.String(), "\r", ""), "\n")
	var b strings.Builder
	blank := 0
	for _, l := range lines {
		l = strings.Join(strings.FieldsFunc(l, func(r rune) bool { return r == ' ' || r == '\t' || r == '\f' || r == '\v' }), " ")
		if l == "" {
			blank++
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\n")
			if blank > 0 {
				b.WriteString("\n")
			}
		}
		blank = 0
		b.WriteString(l)
	}
	return b.String()
}

// linkText is a link in the plain-text alternative: "text (url)", or the
// text alone when it is the address (or its mailto: address), when the
// link points into the message (cid:) or has no address.
func linkText(text, href string) string {
	text = strings.Join(strings.Fields(text), " ")
	switch {
	case text == "" || href == "" || text == href || "mailto:"+text == href,
		strings.HasPrefix(strings.ToLower(href), "cid:"):
		return text
	}
	return text + " (" + href + ")"
}
