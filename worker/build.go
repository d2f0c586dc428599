package worker

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"html"
	"maps"
	"mime"
	"net/mail"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	gomail "github.com/wneessen/go-mail"

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
	// Msg is the message itself.
	Msg *gomail.Msg

	raw []byte // Msg rendered, by render

	// stop, when set, is asked right before the transaction begins
	// (after waiting for the rate limit and a session): true means the
	// message was cancelled meanwhile, and Send returns errCancelled
	// without sending.
	stop func() bool
}

// render returns the message as it goes over the wire, rendering it on
// the first call.
func (e *Envelope) render() ([]byte, error) {
	if e.raw == nil {
		var buf bytes.Buffer
		if _, err := e.Msg.WriteTo(&buf); err != nil {
			return nil, fmt.Errorf("render message: %w", err)
		}
		e.raw = buf.Bytes()
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
}

// errNoSender is returned by Build when neither the request nor the
// connection names a sender.
var errNoSender = config.ErrNoSender

// Build renders req as a MIME message with go-mail: display names and UTF-8
// subjects (RFC 2047), HTML with a plain-text alternative, attachments and
// inline parts with Content-ID, file names in RFC 2231, Importance and
// X-Priority, Reply-To, the extra headers, a Message-ID derived from the Id
// (so the same on every retry) and Date. req must have passed Validate;
// Build's errors then only concern the sender.
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
	m.FromMailAddress(from)
	env := &Envelope{ID: req.Id, Connection: req.Connection, From: from.Address, Msg: m}
	seen := map[string]bool{}
	for _, l := range []struct {
		list schema.AddressList
		set  func(...*mail.Address)
	}{{req.To, m.ToMailAddress}, {req.CC, m.CcMailAddress}, {req.Bcc, m.BccMailAddress}} {
		addrs, err := l.list.Addresses()
		if err != nil {
			return nil, err
		}
		if len(addrs) > 0 {
			l.set(addrs...)
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
		m.ReplyToMailAddress(addrs...)
	}
	setText(m, gomail.HeaderSubject, req.Subject)
	date := opts.Date
	if date.IsZero() {
		date = time.Now()
	}
	m.SetDateWithValue(date)
	env.MessageID = messageID(req.Id, from.Address)
	m.SetMessageIDWithValue(env.MessageID)
	switch req.Importance {
	case schema.ImportanceHigh:
		m.SetImportance(gomail.ImportanceHigh)
	case schema.ImportanceLow:
		m.SetImportance(gomail.ImportanceLow)
	}
	m.SetUserAgent("jetmail")
	for _, name := range slices.Sorted(maps.Keys(req.Headers)) {
		setText(m, gomail.Header(name), req.Headers[name])
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

// setText sets an unstructured header field. go-mail RFC 2047-encodes
// values that are not plain ASCII; a plain-ASCII value that contains "=?"
// would be read back as an encoded word, so it is encoded too.
func setText(m *gomail.Msg, h gomail.Header, v string) {
	if !strings.Contains(v, "=?") {
		m.SetGenHeader(h, v)
		return
	}
	m.SetGenHeaderPreformatted(h, encodeWords(v))
}

// encodeWords encodes s as base64 encoded words (RFC 2047) of at most 75
// characters each, never splitting a UTF-8 sequence.
func encodeWords(s string) string {
	const maxChunk = 45 // 60 base64 characters, 72 with the =?UTF-8?b?…?= frame
	var words []string
	for len(s) > 0 {
		n := min(len(s), maxChunk)
		for n < len(s) && n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		words = append(words, "=?UTF-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return strings.Join(words, "\r\n ")
}

// fileHeaders sets the part headers that name a file: Content-Type with a
// name parameter and Content-Disposition with a filename parameter, both
// formatted by mime.FormatMediaType, which uses RFC 2231 for non-ASCII
// names; and Content-ID for inline parts.
func fileHeaders(name, contentType, contentID string) gomail.FileOption {
	return func(f *gomail.File) {
		mt, params, err := mime.ParseMediaType(contentType)
		if err != nil {
			mt, params = "application/octet-stream", nil
		}
		if params == nil {
			params = map[string]string{}
		}
		params["name"] = name
		if v := mime.FormatMediaType(mt, params); v != "" {
			f.Header.Set("Content-Type", v)
		}
		disp := "attachment"
		if contentID != "" {
			disp = "inline"
			f.Header.Set("Content-ID", "<"+contentID+">")
		}
		if v := mime.FormatMediaType(disp, map[string]string{"filename": name}); v != "" {
			f.Header.Set("Content-Disposition", v)
		}
	}
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

var (
	reDropBlocks = regexp.MustCompile(`(?is)<(script|style|head)\b.*?</(script|style|head)\s*>`)
	reLink       = regexp.MustCompile(`(?is)<a\b[^>]*\bhref\s*=\s*["']([^"']+)["'][^>]*>(.*?)</a\s*>`)
	reBreak      = regexp.MustCompile(`(?i)<br\s*/?>`)
	reBlockEnd   = regexp.MustCompile(`(?i)</(p|div|h[1-6]|tr|table|blockquote|pre|ul|ol)\s*>`)
	reListItem   = regexp.MustCompile(`(?i)<li\b[^>]*>`)
	reTag        = regexp.MustCompile(`(?s)<[^>]*>`)
	reSpaces     = regexp.MustCompile(`[ \t\r\f\v]+`)
	reBlankLines = regexp.MustCompile(`\n\s*\n\s*\n+`)
)

// htmlToText derives the plain-text alternative of an HTML body: scripts and
// styles dropped, links kept as "text (url)", block ends as line breaks,
// entities decoded.
func htmlToText(s string) string {
	s = reDropBlocks.ReplaceAllString(s, "")
	s = reLink.ReplaceAllStringFunc(s, func(m string) string {
		sub := reLink.FindStringSubmatch(m)
		text := strings.TrimSpace(reTag.ReplaceAllString(sub[2], ""))
		href := sub[1]
		if text == "" || text == href || strings.HasPrefix(href, "cid:") {
			return text
		}
		return text + " (" + href + ")"
	})
	s = reBreak.ReplaceAllString(s, "\n")
	s = reBlockEnd.ReplaceAllString(s, "\n\n")
	s = reListItem.ReplaceAllString(s, "\n- ")
	s = reTag.ReplaceAllString(s, "")
	s = html.UnescapeString(s)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(reSpaces.ReplaceAllString(l, " "))
	}
	s = strings.Join(lines, "\n")
	s = reBlankLines.ReplaceAllString(s, "\n\n")
	return strings.TrimSpace(s)
}
