package worker

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"testing"
)

// parsedPart is one leaf part of a parsed message.
type parsedPart struct {
	ContentType string            // media type, lower case
	Params      map[string]string // Content-Type parameters
	Disposition string
	FileName    string // Content-Disposition filename, decoded (RFC 2231)
	Name        string // Content-Type name, decoded (RFC 2231)
	ContentID   string
	Body        []byte // decoded
	Path        string // e.g. "multipart/mixed>multipart/related>text/html"
}

// parsedMessage is a message parsed back with net/mail and mime/multipart.
type parsedMessage struct {
	Header  mail.Header
	Subject string // decoded
	Parts   []parsedPart
}

var wordDecoder = &mime.WordDecoder{}

// parseMessage parses raw as a recipient's mail client would.
func parseMessage(t testing.TB, raw []byte) *parsedMessage {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("net/mail cannot read the message: %v\n%s", err, raw)
	}
	subj, err := wordDecoder.DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Fatalf("subject: %v", err)
	}
	pm := &parsedMessage{Header: m.Header, Subject: subj}
	walkPart(t, pm, textprotoHeader(m.Header), m.Body, "")
	return pm
}

type headerGetter interface{ Get(string) string }

func textprotoHeader(h mail.Header) headerGetter { return h }

func walkPart(t testing.TB, pm *parsedMessage, h headerGetter, body io.Reader, path string) {
	t.Helper()
	ct := h.Get("Content-Type")
	if ct == "" {
		ct = "text/plain"
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		t.Fatalf("Content-Type %q: %v", ct, err)
	}
	if path != "" {
		path += ">"
	}
	path += mt
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return
			}
			if err != nil {
				t.Fatalf("multipart %s: %v", path, err)
			}
			walkPart(t, pm, p.Header, p, path)
		}
	}
	data, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	switch strings.ToLower(h.Get("Content-Transfer-Encoding")) {
	case "base64":
		data, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(data)), ""))
		if err != nil {
			t.Fatalf("base64 part %s: %v", path, err)
		}
	case "quoted-printable":
		data, err = io.ReadAll(quotedprintable.NewReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatalf("quoted-printable part %s: %v", path, err)
		}
	}
	pp := parsedPart{ContentType: mt, Params: params, Body: data, Path: path,
		ContentID: strings.Trim(h.Get("Content-Id"), "<>")}
	if d := h.Get("Content-Disposition"); d != "" {
		disp, dparams, err := mime.ParseMediaType(d)
		if err != nil {
			t.Fatalf("Content-Disposition %q: %v", d, err)
		}
		pp.Disposition = disp
		pp.FileName = dparams["filename"]
	}
	pp.Name = params["name"]
	pm.Parts = append(pm.Parts, pp)
}

// part returns the first leaf part whose media type is mt.
func (pm *parsedMessage) part(mt string) *parsedPart {
	for i := range pm.Parts {
		if pm.Parts[i].ContentType == mt {
			return &pm.Parts[i]
		}
	}
	return nil
}

// addresses parses an address header.
func (pm *parsedMessage) addresses(t testing.TB, key string) []*mail.Address {
	t.Helper()
	if pm.Header.Get(key) == "" {
		return nil
	}
	l, err := pm.Header.AddressList(key)
	if err != nil {
		t.Fatalf("%s: %v (%q)", key, err, pm.Header.Get(key))
	}
	return l
}
