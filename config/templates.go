package config

import (
	"bytes"
	"fmt"
	htmltemplate "html/template"
	"os"
	"path/filepath"
	"strings"
	texttemplate "text/template"

	"github.com/jetmail/jetmail/schema"
)

// Templates are the message templates loaded from a templates folder
// (`jetmail worker --templates DIR`), by name. A template NAME consists of up to three files, any of which may
// be missing:
//
//	NAME.subject.tmpl   text/template, the Subject
//	NAME.text.tmpl      text/template, the plain-text body
//	NAME.html.tmpl      html/template, the HTML body (escaped for HTML)
//
// They are executed with the request's TemplateData; a reference to a key
// that TemplateData lacks is an error (the request fails with 400) rather
// than an empty string in a customer's mail.
type Templates map[string]*messageTemplate

type messageTemplate struct {
	subject, text *texttemplate.Template
	html          *htmltemplate.Template
}

// LoadTemplates parses every *.tmpl file of dir. An empty dir loads none.
func LoadTemplates(dir string) (Templates, error) {
	out := Templates{}
	if dir == "" {
		return out, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.tmpl"))
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("templates: no *.tmpl files in %s", dir)
	}
	for _, f := range files {
		base := strings.TrimSuffix(filepath.Base(f), ".tmpl")
		dot := strings.LastIndexByte(base, '.')
		if dot <= 0 {
			return nil, fmt.Errorf("templates: %s: want NAME.subject.tmpl, NAME.text.tmpl or NAME.html.tmpl", f)
		}
		name, part := base[:dot], base[dot+1:]
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("templates: %w", err)
		}
		mt := out[name]
		if mt == nil {
			mt = &messageTemplate{}
			out[name] = mt
		}
		switch part {
		case "subject":
			mt.subject, err = texttemplate.New(base).Option("missingkey=error").Parse(string(src))
		case "text":
			mt.text, err = texttemplate.New(base).Option("missingkey=error").Parse(string(src))
		case "html":
			mt.html, err = htmltemplate.New(base).Option("missingkey=error").Parse(string(src))
		default:
			return nil, fmt.Errorf("templates: %s: unknown part %q (want subject, text or html)", f, part)
		}
		if err != nil {
			return nil, fmt.Errorf("templates: %w", err)
		}
	}
	return out, nil
}

// Apply renders req's Template into req: Subject, Body and IsHtml (from the
// HTML part, else the text part) and TextBody (from the text part when
// there is an HTML part). Errors name the template and the field.
func (ts Templates) Apply(req *schema.Request) error {
	if req.Template == "" {
		return nil
	}
	mt, ok := ts[req.Template]
	if !ok {
		return &schema.ValidationError{Fields: []schema.FieldError{{Field: "Template", Message: fmt.Sprintf("unknown template %q", req.Template)}}}
	}
	run := func(field string, exec func(*bytes.Buffer) error) (string, error) {
		var buf bytes.Buffer
		if err := exec(&buf); err != nil {
			return "", &schema.ValidationError{Fields: []schema.FieldError{{Field: "TemplateData", Message: fmt.Sprintf("template %s (%s): %v", req.Template, field, err)}}}
		}
		return buf.String(), nil
	}
	data := req.TemplateData
	if mt.subject != nil {
		s, err := run("subject", func(b *bytes.Buffer) error { return mt.subject.Execute(b, data) })
		if err != nil {
			return err
		}
		req.Subject = strings.TrimSpace(s)
	}
	var text, html string
	var err error
	if mt.text != nil {
		if text, err = run("text", func(b *bytes.Buffer) error { return mt.text.Execute(b, data) }); err != nil {
			return err
		}
	}
	if mt.html != nil {
		if html, err = run("html", func(b *bytes.Buffer) error { return mt.html.Execute(b, data) }); err != nil {
			return err
		}
	}
	switch {
	case mt.html != nil:
		req.Body, req.IsHtml = html, true
		if mt.text != nil {
			req.TextBody = text
		}
	case mt.text != nil:
		req.Body, req.IsHtml = text, false
	}
	return nil
}
