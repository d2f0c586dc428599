package schema

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/mail"
	"strings"
)

// Request is one email-send request as published on the mail.send subject.
//
// The first block of fields is the SMTP connector's "Send Email" action; the
// second block is what jetmail adds. The JSON keys are the field names and are
// matched case-insensitively when decoding.
type Request struct {
	// To, CC and Bcc are the recipients. At least one of the three must be
	// non-empty. Bcc recipients get the message but never appear in its
	// headers.
	To  AddressList `json:"To,omitempty"`
	CC  AddressList `json:"CC,omitempty"`
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

// IsBase64 reports whether ContentData is base64-encoded.
func (a *Attachment) IsBase64() bool {
	return strings.EqualFold(strings.TrimSpace(a.ContentTransferEncoding), "base64")
}

// Content returns the attachment's bytes, decoding base64 when
// ContentTransferEncoding says so. Line breaks and spaces inside base64 data
// are ignored, as MIME encoders insert them.
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
	b, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		// Some encoders omit the padding.
		if b2, err2 := base64.RawStdEncoding.DecodeString(strings.TrimRight(clean, "=")); err2 == nil {
			return b2, nil
		}
		return nil, err
	}
	return b, nil
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
		return fmt.Errorf("want a string or an array of strings, got %.20s", data)
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
// outside quoted display names and angle brackets, dropping empty entries.
func SplitAddresses(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, inAngle, escaped := false, false, false
	flush := func() {
		if t := strings.TrimSpace(cur.String()); t != "" {
			out = append(out, t)
		}
		cur.Reset()
	}
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
		case r == '\\' && inQuote:
			escaped = true
		case r == '"':
			inQuote = !inQuote
		case r == '<' && !inQuote:
			inAngle = true
		case r == '>' && !inQuote:
			inAngle = false
		case (r == ';' || r == ',') && !inQuote && !inAngle:
			flush()
			continue
		}
		cur.WriteRune(r)
	}
	flush()
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
// case, and "" as false), because the connector sends IsHtml either way.
type Bool bool

// UnmarshalJSON accepts true, false, null, or a string holding one of them.
func (b *Bool) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	var s string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
	} else {
		s = string(data)
	}
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1":
		*b = true
	case "false", "0", "", "null":
		*b = false
	default:
		return fmt.Errorf("want true or false, got %.20s", data)
	}
	return nil
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

// UnmarshalJSON accepts the three levels in any case; other strings are kept
// as they are so that Validate can report them with the field path.
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
		if strings.EqualFold(strings.TrimSpace(s), string(v)) {
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
