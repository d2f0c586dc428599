package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
	"github.com/jetmail/jetmail/worker/smtptest"
)

func writeTemplates(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	dir := writeTemplates(t, map[string]string{
		"welcome.subject.tmpl": "Witaj, {{.Name}}!",
		"welcome.text.tmpl":    "Cześć {{.Name}}, your code is {{.Code}}.",
		"welcome.html.tmpl":    "<p>Cześć <b>{{.Name}}</b>, your code is {{.Code}}.</p>",
		"plain.text.tmpl":      "Only text for {{.Name}}",
		"raw.subject.tmpl":     "{{.S}}",
	})
	srv := smtptest.NewServer(t)
	b := smtpBundle(t, srv, Config{Templates: dir})

	b.publish(t, map[string]any{"Id": "tpl-html", "To": "a@example.com", "Template": "welcome",
		"TemplateData": map[string]any{"Name": "Jan <script>", "Code": 1234}}, "tpl-html")
	b.publish(t, map[string]any{"Id": "tpl-text", "To": "a@example.com", "Subject": "kept", "Template": "plain",
		"TemplateData": map[string]any{"Name": "Ola"}}, "tpl-text")
	b.publish(t, map[string]any{"Id": "tpl-missing", "To": "a@example.com", "Template": "welcome",
		"TemplateData": map[string]any{"Name": "Jan"}}, "tpl-missing")
	b.publish(t, map[string]any{"Id": "tpl-unknown", "To": "a@example.com", "Template": "nope"}, "tpl-unknown")
	b.publish(t, map[string]any{"Id": "tpl-inject", "To": "a@example.com", "Template": "raw",
		"TemplateData": map[string]any{"S": "hi\r\nBcc: victim@example.com"}}, "tpl-inject")

	if fin, _ := b.results.Final(t, "tpl-html"); fin.Status != schema.Status200 {
		t.Fatalf("tpl-html: %+v", fin)
	}
	if fin, _ := b.results.Final(t, "tpl-text"); fin.Status != schema.Status200 {
		t.Fatalf("tpl-text: %+v", fin)
	}
	for id, field := range map[string]string{"tpl-missing": "TemplateData", "tpl-unknown": "Template", "tpl-inject": "Subject"} {
		fin, _ := b.results.Final(t, id)
		if fin.Status != schema.Status400 || len(fin.Fields) == 0 || fin.Fields[0].Field != field {
			t.Errorf("%s: want 400 on %s, got %+v", id, field, fin)
		}
	}
	msgs := waitMessages(t, srv, 2)
	if len(msgs) != 2 {
		t.Fatalf("%d messages delivered, want 2 (invalid ones must not be sent)", len(msgs))
	}
	byID := map[string]*parsedMessage{}
	for _, m := range msgs {
		pm := parseMessage(t, m.Data)
		byID[pm.Header.Get("Message-Id")] = pm
	}
	html := byID["<tpl-html.jetmail@example.com>"]
	if html == nil || html.Subject != "Witaj, Jan <script>!" {
		t.Fatalf("html message: %+v", html)
	}
	if p := html.part("text/html"); p == nil || !strings.Contains(string(p.Body), "<b>Jan &lt;script&gt;</b>, your code is 1234.") {
		t.Errorf("HTML part not rendered and escaped: %+v", p)
	}
	if p := html.part("text/plain"); p == nil || string(p.Body) != "Cześć Jan <script>, your code is 1234." {
		t.Errorf("text part: %+v", p)
	}
	text := byID["<tpl-text.jetmail@example.com>"]
	if text == nil || text.Subject != "kept" || text.part("text/html") != nil {
		t.Fatalf("text-only template message: %+v", text)
	}
	if p := text.part("text/plain"); p == nil || strings.TrimRight(string(p.Body), "\r\n") != "Only text for Ola" {
		t.Errorf("text part: %+v", p)
	}
}
