package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/jetmail/jetmail/schema"
)

// connectionsFile is the YAML file of `jetmail worker --connections`:
//
//	connections:
//	  default:
//	    url: smtp://mailer@relay.example.com:587?tls=required
//	    password_file: /run/secrets/relay
//	    pool_size: 8
//	    rate_limit: 50
//	    from: "Shop <noreply@example.com>"
//	    allowed_senders: ["@example.com"]
//	  marketing:
//	    url: smtps://bulk.example.com:465
//	    password_env: BULK_SMTP_PASSWORD
//
// Unknown keys are errors, so that a misspelt setting is not silently
// ignored.
type connectionsFile struct {
	Connections map[string]*fileConnection `yaml:"connections"`
}

// fileConnection is one named connection of the file.
type fileConnection struct {
	// URL is the SMTP URL, as --smtp-url. Required.
	URL string `yaml:"url"`
	// PasswordFile, PasswordEnv and Password are the password's sources;
	// at most one may be set. Password (in the file itself) is allowed,
	// with a warning.
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	Password     string `yaml:"password"`
	// CAFile is a PEM file of the CAs to verify the server with.
	CAFile string `yaml:"ca_file"`
	// PoolSize is the largest number of open sessions; default 4.
	PoolSize int `yaml:"pool_size"`
	// RateLimit is the most messages per second, shared by all sessions
	// of a worker; 0 means no limit.
	RateLimit float64 `yaml:"rate_limit"`
	// From is the default sender.
	From string `yaml:"from"`
	// AllowedSenders are the senders allowed (addresses or @domain).
	AllowedSenders []string `yaml:"allowed_senders"`
	// HELO is the name sent with EHLO; default the host name.
	HELO string `yaml:"helo"`
	// Timeout bounds each SMTP command, such as 30s.
	Timeout time.Duration `yaml:"timeout"`
	// OnUncertain is retry (default) or assume-sent.
	OnUncertain string `yaml:"on_uncertain"`
	// DKIM are the connection's signing keys.
	DKIM []fileDKIMKey `yaml:"dkim"`
}

// fileDKIMKey is one entry of a connection's dkim list.
type fileDKIMKey struct {
	Domain   string `yaml:"domain"`
	Selector string `yaml:"selector"`
	KeyFile  string `yaml:"key_file"`
}

// fileConnectionKeys are the keys a connection may have, for error
// messages.
func fileConnectionKeys() string {
	t := reflect.TypeFor[fileConnection]()
	var keys []string
	for i := range t.NumField() {
		keys = append(keys, t.Field(i).Tag.Get("yaml"))
	}
	return strings.Join(keys, ", ")
}

// LoadConnections reads the connections file at path (the YAML of `jetmail
// worker --connections`, see deploy/connections.example.yaml) into named
// SMTP connections. Paths in it (password_file, ca_file) are relative to
// the file's folder. lookupEnv reads password_env variables; a password
// written in the file itself is accepted with a warning on logger (nil
// discards it). Unknown keys are errors, so that a misspelt setting is not
// silently ignored. Every problem is reported, each as "FILE:LINE: ...",
// and no error contains a password.
func LoadConnections(path string, lookupEnv func(string) (string, bool), logger *slog.Logger) (map[string]SMTP, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--connections: %w", err)
	}
	fail := func(line int, format string, args ...any) error {
		loc := path
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", path, line)
		}
		return fmt.Errorf("--connections %s: %s", loc, fmt.Sprintf(format, args...))
	}

	var file connectionsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fail(0, "the file is empty; want a connections: mapping")
		}
		return nil, yamlError(path, err)
	}
	// Where each connection is, for the messages below.
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc)
	lines := connectionLines(&doc)

	if len(file.Connections) == 0 {
		return nil, fail(0, "no connections in it; want connections: NAME: {url: ...}")
	}
	names := make([]string, 0, len(file.Connections))
	for name := range file.Connections {
		names = append(names, name)
	}
	slices.Sort(names)
	dir := filepath.Dir(path)
	rel := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}

	conns := map[string]SMTP{}
	var errs []error
	for _, name := range names {
		c, line := file.Connections[name], lines[name]
		bad := func(format string, args ...any) {
			errs = append(errs, fail(line, "connection %q: %s", name, fmt.Sprintf(format, args...)))
		}
		if !schema.ValidToken(name) {
			bad("not a valid connection name (no '.', '*', '>' or white space)")
			continue
		}
		if c == nil {
			bad("no settings; want at least url")
			continue
		}
		if c.URL == "" {
			bad("url is missing")
			continue
		}
		sc := SMTP{
			URL:            c.URL,
			CAFile:         rel(c.CAFile),
			PoolSize:       c.PoolSize,
			RateLimit:      c.RateLimit,
			From:           c.From,
			AllowedSenders: c.AllowedSenders,
			HELO:           c.HELO,
			Timeout:        c.Timeout,
			OnUncertain:    c.OnUncertain,
		}
		for _, k := range c.DKIM {
			sc.DKIM = append(sc.DKIM, DKIMKey{Domain: k.Domain, Selector: k.Selector, KeyFile: rel(k.KeyFile)})
		}
		sources := 0
		for _, s := range []string{c.Password, c.PasswordFile, c.PasswordEnv} {
			if s != "" {
				sources++
			}
		}
		switch {
		case sources > 1:
			bad("set only one of password_file, password_env and password")
			continue
		case c.PasswordFile != "":
			b, err := os.ReadFile(rel(c.PasswordFile))
			if err != nil {
				bad("password_file: %v", err)
				continue
			}
			if sc.Password = strings.TrimSpace(string(b)); sc.Password == "" {
				bad("password_file %s is empty", rel(c.PasswordFile))
				continue
			}
		case c.PasswordEnv != "":
			v, ok := lookupEnv(c.PasswordEnv)
			if !ok || v == "" {
				bad("password_env: the environment variable %s is not set", c.PasswordEnv)
				continue
			}
			sc.Password = v
		case c.Password != "":
			sc.Password = c.Password
			logger.Warn("a password is written in the connections file; prefer password_file or password_env, and keep the file unreadable to others",
				"file", path, "connection", name)
		}
		if sc.Password != "" {
			if u, err := url.Parse(c.URL); err == nil && (u.User == nil || u.User.Username() == "") {
				bad("a password is set but the url names no user to log in as (smtp://USER@host)")
				continue
			}
		}
		if c.PoolSize < 0 {
			bad("pool_size must be positive, got %d", c.PoolSize)
			continue
		}
		if c.RateLimit < 0 {
			bad("rate_limit must not be negative, got %g", c.RateLimit)
			continue
		}
		if c.Timeout < 0 {
			bad("timeout must not be negative, got %s", c.Timeout)
			continue
		}
		// The URL, the CA file and the rest, checked without dialing.
		if err := sc.Validate(); err != nil {
			bad("%s", Scrub(err.Error(), sc.Password))
			continue
		}
		conns[name] = sc
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return conns, nil
}

// yamlError is YAMLError for the connections file, in words of its keys.
func yamlError(path string, err error) error {
	return YAMLError("--connections "+path, err, func(m string) string {
		if strings.Contains(m, "not found in type config.fileConnection") {
			m = strings.Replace(m, "not found in type config.fileConnection", "is not a connection setting", 1) +
				" (known: " + fileConnectionKeys() + ")"
		} else if strings.Contains(m, "not found in type config.connectionsFile") {
			m = strings.Replace(m, "not found in type config.connectionsFile", "is not known", 1) +
				"; the file has one key, connections"
		}
		m = strings.ReplaceAll(m, "config.fileConnection", "a connection")
		return strings.ReplaceAll(m, "config.connectionsFile", "the file")
	})
}

// connectionLines maps each connection name to the line of its key.
func connectionLines(doc *yaml.Node) map[string]int {
	lines := map[string]int{}
	if doc == nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return lines
	}
	top := doc.Content[0].Content
	for i := 0; i+1 < len(top); i += 2 {
		if top[i].Value != "connections" || top[i+1].Kind != yaml.MappingNode {
			continue
		}
		cs := top[i+1].Content
		for j := 0; j+1 < len(cs); j += 2 {
			lines[cs[j].Value] = cs[j].Line
		}
	}
	return lines
}

// Scrub replaces every secret in msg, and the usual encodings of it
// (URL-escaped, base64), by "xxxxx", so that an error message that quotes
// a setting cannot leak a password. Secrets shorter than three characters
// are left alone: they cannot be told from ordinary text.
func Scrub(msg string, secrets ...string) string {
	for _, s := range secrets {
		if len(s) < 3 {
			continue
		}
		for _, form := range []string{s, url.QueryEscape(s), url.PathEscape(s),
			base64.StdEncoding.EncodeToString([]byte(s)), base64.RawStdEncoding.EncodeToString([]byte(s))} {
			msg = strings.ReplaceAll(msg, form, "xxxxx")
		}
	}
	return msg
}
