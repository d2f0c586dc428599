package schema

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"
)

// Request is one email-send request as published on the mail.send subject.
//
// The first block of fields is the SMTP connector's "Send Email" action; the
// second block is what jetmail adds. The JSON keys are the field names and are
// matched case-insensitively when decoding.
type Request struct {
	// To, CC and Bcc are the recipients. At least one of the three must be
	// non-empty.
	To AddressList `json:"To,omitempty"`
	// CC are the carbon-copy recipients.
	CC AddressList `json:"CC,omitempty"`
	// Bcc are the blind-copy recipients: they get the message but never
	// appear in its headers.
	Bcc AddressList `json:"Bcc,omitempty"`
	// From is the sender, optionally with a display name. Empty means the
	// connection's default sender.
	From string `json:"From,omitempty"`
	// Subject is any Unicode text; it is RFC 2047-encoded when needed.
	Subject string `json:"Subject,omitempty"`
	// Body is the text of the message, or its HTML when IsHtml is true.
	Body string `json:"Body,omitempty"`
	// IsHtml says that Body is HTML.
	IsHtml Bool `json:"IsHtml,omitempty"`
	// Importance sets the Importance and X-Priority headers. Empty means
	// normal, which sets neither.
	Importance Importance `json:"Importance,omitempty"`
	// Attachments are files attached to the message, or inline parts when
	// they have a ContentId.
	Attachments []Attachment `json:"Attachments,omitempty"`

	// Id is the idempotency key, [A-Za-z0-9_-]{1,128}. Producers set it and
	// the Nats-Msg-Id header to the same value; a worker generates one when
	// both are absent.
	Id string `json:"Id,omitempty"`
	// ReplyTo becomes the Reply-To header.
	ReplyTo AddressList `json:"ReplyTo,omitempty"`
	// TextBody is the plain-text alternative of an HTML body. When empty and
	// IsHtml is true, the worker derives one from the HTML.
	TextBody string `json:"TextBody,omitempty"`
	// Headers are extra header fields such as List-Unsubscribe or X-*.
	// Structural headers (see IsStructuralHeader) cannot be set this way.
	Headers map[string]string `json:"Headers,omitempty"`
	// Connection names the SMTP connection to send through; empty means
	// "default".
	Connection string `json:"Connection,omitempty"`
	// Metadata is echoed unchanged in every result event of the request.
	Metadata map[string]string `json:"Metadata,omitempty"`
	// Template names a template from the worker's templates folder. The
	// template renders Subject, Body (HTML) and TextBody from TemplateData,
	// replacing those fields where it defines them.
	Template string `json:"Template,omitempty"`
	// TemplateData is the data a Template is executed with.
	TemplateData map[string]any `json:"TemplateData,omitempty"`

	// Priority is the lane the request asks for: urgent, normal or bulk.
	// The jetmail send command, the HTTP API and package producer publish
	// the request on that lane's subject (see Names.LaneSubject); a worker
	// delivers a request in the lane of the subject it arrived on. Empty
	// means the lane of the subject the request is published on.
	Priority Lane `json:"Priority,omitempty"`
	// SendAt, when set, is the time before which the message is not sent.
	// In JSON it is an RFC 3339 time with an offset ("Z" or ±hh:mm). A time
	// in the past means now; one more than Limits.MaxSchedule ahead makes
	// the request invalid. Nil means now.
	SendAt *time.Time `json:"SendAt,omitempty"`
	// BatchId groups requests for cancellation, search and the console,
	// [A-Za-z0-9_-]{1,128}. Empty means none.
	BatchId string `json:"BatchId,omitempty"`
	// Unsubscribe asks for List-Unsubscribe (and, for https: URLs and
	// jetmail's own endpoint, List-Unsubscribe-Post) headers per RFC 8058.
	// It excludes List-Unsubscribe and List-Unsubscribe-Post in Headers.
	// The zero value asks for none.
	Unsubscribe Unsubscribe `json:"Unsubscribe,omitzero"`
	// IgnoreSuppression sends to every recipient, even those on the
	// suppression list, for mail a person must get (a password reset).
	IgnoreSuppression Bool `json:"IgnoreSuppression,omitempty"`
}

// Attachment is a file attached to a request.
type Attachment struct {
	// ContentData is the file's content: base64 when ContentTransferEncoding
	// is "base64", else the content as is.
	ContentData string `json:"ContentData"`
	// ContentType is the MIME type. Empty means it is guessed from FileName,
	// falling back to application/octet-stream.
	ContentType string `json:"ContentType,omitempty"`
	// ContentTransferEncoding says how ContentData is encoded in the request:
	// "base64" or "none" (any case). Empty means "none".
	ContentTransferEncoding string `json:"ContentTransferEncoding,omitempty"`
	// FileName is the file's name; required, any Unicode.
	FileName string `json:"FileName"`
	// ContentId, when set, makes the part inline with Content-ID:
	// <ContentId>, for cid: references in the HTML body.
	ContentId string `json:"ContentId,omitempty"`
}

// IsBase64 reports whether ContentData is base64-encoded, that is whether
// ContentTransferEncoding is "base64" in any case.
func (a *Attachment) IsBase64() bool {
	return strings.EqualFold(a.ContentTransferEncoding, "base64")
}

// Content returns the attachment's bytes, decoding base64 when
// ContentTransferEncoding says so. Line breaks, spaces and tabs inside base64
// data are ignored, as MIME encoders insert them. The padding may be complete
// or left out, but not partial or excessive: "QQ==" and "QQ" decode, "QQ="
// and "QQ===" do not.
func (a *Attachment) Content() ([]byte, error) {
	if !a.IsBase64() {
		return []byte(a.ContentData), nil
	}
	clean := strings.Map(func(r rune) rune {
		switch r {
		case '\r', '\n', ' ', '\t':
			return -1
		}
		return r
	}, a.ContentData)
	enc := base64.StdEncoding
	if len(clean)%4 != 0 {
		// Some encoders omit the padding; then there must be none at all.
		enc = base64.RawStdEncoding
	}
	return enc.DecodeString(clean)
}

// AddressList is a list of addresses. In JSON it is either one string with
// entries separated by ';' or ',' (the connector's form) or an array of
// strings; each entry may carry a display name, as in
// "Jan Kowalski" <jan@example.com>. It is always encoded as an array.
type AddressList []string

// UnmarshalJSON accepts a separated string, an array of strings (each of
// which may itself hold separated entries), or null.
func (l *AddressList) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case bytes.Equal(data, []byte("null")):
		*l = nil
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*l = SplitAddresses(s)
		return nil
	case len(data) > 0 && data[0] == '[':
		var items []string
		if err := json.Unmarshal(data, &items); err != nil {
			return fmt.Errorf("want a string or an array of strings: %w", err)
		}
		var out AddressList
		for _, it := range items {
			out = append(out, SplitAddresses(it)...)
		}
		*l = out
		return nil
	default:
		return fmt.Errorf("want a string or an array of strings, got %s", snippet(data))
	}
}

// Addresses parses every entry of the list.
func (l AddressList) Addresses() ([]*mail.Address, error) {
	out := make([]*mail.Address, 0, len(l))
	for _, s := range l {
		a, err := ParseAddress(s)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// SplitAddresses splits the connector's recipient string at ';' and ','
// outside quoted display names and angle brackets, trims white space around
// each entry and drops empty entries. Inside quotes a backslash escapes the
// next character. The bytes of each entry are those of s.
func SplitAddresses(s string) []string {
	var out []string
	inQuote, inAngle, escaped := false, false, false
	start := 0
	flush := func(end int) {
		if t := strings.TrimSpace(s[start:end]); t != "" {
			out = append(out, t)
		}
	}
	// Every byte that changes the state is ASCII, so scanning bytes keeps
	// multi-byte (and invalid) UTF-8 sequences intact.
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			escaped = false
		case c == '\\' && inQuote:
			escaped = true
		case c == '"':
			inQuote = !inQuote
		case c == '<' && !inQuote:
			inAngle = true
		case c == '>' && !inQuote:
			inAngle = false
		case (c == ';' || c == ',') && !inQuote && !inAngle:
			flush(i)
			start = i + 1
		}
	}
	flush(len(s))
	return out
}

// ParseAddress parses one address as the contract allows it: a bare
// addr-spec or a display name with an angle-addr. The address must have a
// local part and a domain.
func ParseAddress(s string) (*mail.Address, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errCRLF
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("not a valid email address: %q", s)
	}
	at := strings.LastIndexByte(a.Address, '@')
	if at <= 0 || at == len(a.Address)-1 {
		return nil, fmt.Errorf("not a valid email address: %q", s)
	}
	return a, nil
}

// Bool is a boolean that also accepts the strings "true" and "false" (any
// case, and "" as false), because the connector sends IsHtml either way. It
// is always encoded as a JSON boolean.
type Bool bool

// UnmarshalJSON accepts true, false and null (false), or a string holding
// "true", "false" (in any case) or nothing (false). Numbers and other strings
// are errors.
func (b *Bool) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		switch {
		case strings.EqualFold(s, "true"):
			*b = true
			return nil
		case s == "" || strings.EqualFold(s, "false"):
			*b = false
			return nil
		}
	} else {
		switch string(data) {
		case "true":
			*b = true
			return nil
		case "false", "null":
			*b = false
			return nil
		}
	}
	return fmt.Errorf("want true or false, got %s", snippet(data))
}

// snippet returns the start of a JSON value for an error message, cut at a
// rune boundary.
func snippet(data []byte) string {
	const max = 20
	if len(data) <= max {
		return string(data)
	}
	n := max
	for n > 0 && !utf8.RuneStart(data[n]) {
		n--
	}
	return string(data[:n]) + "…"
}

// Importance is the message priority: "High", "Normal" or "Low". Decoding
// accepts any case and normalises it.
type Importance string

// The importance levels of the contract.
const (
	ImportanceNormal Importance = "Normal"
	ImportanceHigh   Importance = "High"
	ImportanceLow    Importance = "Low"
)

// UnmarshalJSON accepts the three levels in any case (but without surrounding
// spaces), and null or "" for none; other strings are kept as they are so
// that Validate can report them with the field path.
func (i *Importance) UnmarshalJSON(data []byte) error {
	var s string
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		*i = ""
		return nil
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("want \"High\", \"Normal\" or \"Low\"")
	}
	for _, v := range []Importance{ImportanceHigh, ImportanceNormal, ImportanceLow} {
		if strings.EqualFold(s, string(v)) {
			*i = v
			return nil
		}
	}
	*i = Importance(s)
	return nil
}

// Valid reports whether i is one of the three levels or empty.
func (i Importance) Valid() bool {
	switch i {
	case "", ImportanceHigh, ImportanceNormal, ImportanceLow:
		return true
	}
	return false
}

// Unsubscribe is the one-click unsubscribe a request asks for (RFC 8058):
// jetmail's own endpoint, or a URL of the sender's. In JSON it is true
// (OneClick), or the URL as a string; false and null are the zero value,
// which asks for none. It is encoded as true or the URL, and the zero value
// is omitted.
type Unsubscribe struct {
	// OneClick, true in JSON, asks for jetmail's own one-click endpoint:
	// List-Unsubscribe: <{public-url}/v1/unsubscribe/{token}> with a token
	// per recipient, and List-Unsubscribe-Post.
	OneClick bool
	// URL is an https: or mailto: URL of the sender's, for the
	// List-Unsubscribe header; an https: URL also gets
	// List-Unsubscribe-Post: List-Unsubscribe=One-Click. Empty means none.
	URL string
}

// IsZero reports whether u asks for no unsubscribe header, so that
// encoding omits it.
func (u Unsubscribe) IsZero() bool { return !u.OneClick && u.URL == "" }

// HTTPS reports whether u is a URL with the https scheme (in any case), for
// which the message also gets List-Unsubscribe-Post. It is false for
// OneClick, which the builder handles on its own.
func (u Unsubscribe) HTTPS() bool { return hasPrefixFold(u.URL, "https:") }

// MarshalJSON encodes u as true (OneClick) or the URL as a string; the zero
// value is false. A value with both OneClick and URL set is an error.
func (u Unsubscribe) MarshalJSON() ([]byte, error) {
	switch {
	case u.OneClick && u.URL != "":
		return nil, errors.New("schema.Unsubscribe: OneClick and URL are both set")
	case u.OneClick:
		return []byte("true"), nil
	case u.URL != "":
		return json.Marshal(u.URL)
	}
	return []byte("false"), nil
}

// UnmarshalJSON accepts true (OneClick), false and null (none), or a
// non-empty string (URL), which Validate checks. Other values, the empty
// string included, are errors.
func (u *Unsubscribe) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	switch {
	case bytes.Equal(data, []byte("true")):
		*u = Unsubscribe{OneClick: true}
		return nil
	case bytes.Equal(data, []byte("false")), bytes.Equal(data, []byte("null")):
		*u = Unsubscribe{}
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		if s != "" {
			*u = Unsubscribe{URL: s}
			return nil
		}
	}
	return fmt.Errorf("want true, false or an https: or mailto: URL, got %s", snippet(data))
}
