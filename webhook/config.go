package webhook

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
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/schema"
)

// Config is one named webhook: where events are POSTed, the key they are
// signed with, and which result states are sent.
//
// Config implements fmt.Stringer and slog.LogValuer without the secret and
// with only the scheme, host and path of the URL (a URL may carry a
// password or a token), so it is safe to print and log.
type Config struct {
	// Name identifies the webhook in metrics, logs and `jetmail webhooks
	// test NAME`, and names its JetStream consumer
	// (jetmail-webhook-NAME). Letters, digits, '-' and '_', at most 64.
	Name string
	// URL is the http or https URL events are POSTed to.
	URL string
	// Secret is the HMAC-SHA256 key of the signatures: the decoded bytes of
	// a "whsec_" secret (see ParseSecret).
	Secret []byte
	// States are the result states sent; empty means every state. Events
	// that are not result events (those on <prefix>.event.>, such as an
	// unsubscribe) are always sent.
	States []schema.State
}

// String returns the name, URL (without user information and query) and
// states; never the secret.
func (c Config) String() string {
	s := fmt.Sprintf("webhook %s %s", c.Name, redactURL(c.URL))
	if len(c.States) > 0 {
		s += fmt.Sprintf(" states=%v", c.States)
	}
	return s
}

// LogValue logs the name, URL (without user information and query) and
// states; never the secret.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("name", c.Name),
		slog.String("url", redactURL(c.URL)),
		slog.Any("states", c.States),
	)
}

// redactURL is u without user information, query and fragment.
func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(invalid URL)"
	}
	return (&url.URL{Scheme: p.Scheme, Host: p.Host, Path: p.Path}).String()
}

// knownStates are the states a webhook may filter on: those of the
// contract (§3), including scheduled and cancelled, which v2 adds.
var knownStates = []schema.State{
	schema.StateAccepted, schema.StateDeferred, schema.StateSent, schema.StateFailed,
	"scheduled", "cancelled", // v2 (CONTRACT §3, §8); not yet in package schema
}

// wants reports whether events in state s are sent.
func (c Config) wants(s schema.State) bool {
	return len(c.States) == 0 || slices.Contains(c.States, s)
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// MinSecretBytes is the shortest key ParseSecret accepts: the 24 bytes
// (192 bits) the Standard Webhooks specification recommends at least.
const MinSecretBytes = 24

// ParseSecret decodes a secret in the Standard Webhooks form: "whsec_"
// followed by the standard base64 encoding of the key. The prefix may be
// left out, as the reference libraries allow, and surrounding white space
// (the newline at the end of a secret file) is ignored. The key must be at
// least MinSecretBytes long; make one with
//
//	echo "whsec_$(openssl rand -base64 32)"
//
// The error never contains the secret.
func ParseSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "whsec_")
	if s == "" {
		return nil, errors.New(`secret is empty; want "whsec_" + base64 of a random key`)
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Unpadded base64 is common enough to accept.
		if k, rerr := base64.RawStdEncoding.DecodeString(s); rerr == nil {
			key, err = k, nil
		}
	}
	if err != nil {
		return nil, errors.New(`secret is not "whsec_" + standard base64`)
	}
	if len(key) < MinSecretBytes {
		return nil, fmt.Errorf("secret is %d bytes, want at least %d (make one with: echo \"whsec_$(openssl rand -base64 32)\")", len(key), MinSecretBytes)
	}
	return key, nil
}

// readSecret reads and parses a secret file.
func readSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := ParseSecret(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return key, nil
}

// checkURL accepts an absolute http or https URL with a host.
func checkURL(u string) error {
	if u == "" {
		return errors.New("url is missing")
	}
	p, err := url.Parse(u)
	if err != nil {
		return fmt.Errorf("url is not valid: %w", err)
	}
	if p.Scheme != "http" && p.Scheme != "https" || p.Host == "" {
		return fmt.Errorf("url %s: want http://HOST/… or https://HOST/…", redactURL(u))
	}
	return nil
}

// checkStates parses state names, ignoring repeats.
func checkStates(names []string) ([]schema.State, error) {
	var states []schema.State
	for _, n := range names {
		s := schema.State(n)
		if !slices.Contains(knownStates, s) {
			return nil, fmt.Errorf("state %q is not known (known: %s)", n, stateList())
		}
		if !slices.Contains(states, s) {
			states = append(states, s)
		}
	}
	return states, nil
}

func stateList() string {
	var s []string
	for _, st := range knownStates {
		s = append(s, string(st))
	}
	return strings.Join(s, ", ")
}

// validate checks a Config made by code rather than by LoadFile.
func (c Config) validate() error {
	if !validName.MatchString(c.Name) {
		return fmt.Errorf("webhook name %q: use 1 to 64 letters, digits, '-' and '_'", c.Name)
	}
	if err := checkURL(c.URL); err != nil {
		return fmt.Errorf("webhook %s: %w", c.Name, err)
	}
	if len(c.Secret) == 0 {
		return fmt.Errorf("webhook %s: no secret", c.Name)
	}
	for _, s := range c.States {
		if !slices.Contains(knownStates, s) {
			return fmt.Errorf("webhook %s: state %q is not known (known: %s)", c.Name, s, stateList())
		}
	}
	return nil
}

// FromFlags returns the webhook of the worker flags --webhook URL and
// --webhook-secret-file FILE, named "default", with every state. Both are
// required; errors name the flag.
func FromFlags(rawURL, secretFile string) (Config, error) {
	c := Config{Name: "default", URL: rawURL}
	if err := checkURL(rawURL); err != nil {
		return Config{}, fmt.Errorf("--webhook: %w", err)
	}
	if secretFile == "" {
		return Config{}, errors.New("--webhook needs --webhook-secret-file FILE (the signing key, \"whsec_\" + base64)")
	}
	key, err := readSecret(secretFile)
	if err != nil {
		return Config{}, fmt.Errorf("--webhook-secret-file: %w", err)
	}
	c.Secret = key
	return c, nil
}

// webhooksFile is the YAML file of --webhooks (CONTRACT §10):
//
//	webhooks:
//	  crm:
//	    url: https://crm.example.com/hooks/mail
//	    secret_file: /run/secrets/crm-hook
//	    states: [sent, failed]
type webhooksFile struct {
	Webhooks map[string]*fileHook `yaml:"webhooks"`
}

// fileHook is one webhook of the file.
type fileHook struct {
	URL        string   `yaml:"url"`
	SecretFile string   `yaml:"secret_file"`
	States     []string `yaml:"states"`
}

// LoadFile reads the webhooks file at path (CONTRACT §10):
//
//	webhooks:
//	  crm:
//	    url: https://crm.example.com/hooks/mail
//	    secret_file: /run/secrets/crm-hook   # "whsec_" + base64 of the key
//	    states: [sent, failed]               # default: every state
//
// A relative secret_file is relative to the folder of the file. Unknown
// keys, names that cannot name a JetStream consumer (see Config.Name),
// missing url or secret_file, unreadable or malformed secrets and unknown
// states are errors. Every problem found is reported, each as
// "PATH:LINE: message", joined into one error. The webhooks are returned
// sorted by name.
func LoadFile(path string) ([]Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("webhooks file: %w", err)
	}
	at := func(line int) string {
		if line > 0 {
			return fmt.Sprintf("%s:%d", path, line)
		}
		return path
	}
	var file webhooksFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: the file is empty; want webhooks: NAME: {url: …, secret_file: …}", path)
		}
		return nil, yamlError(path, err)
	}
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc) // it decoded above, so it parses
	pos := hookPositions(&doc)
	if len(file.Webhooks) == 0 {
		return nil, fmt.Errorf("%s: no webhooks in it; want webhooks: NAME: {url: …, secret_file: …}", at(pos.top))
	}

	names := make([]string, 0, len(file.Webhooks))
	for name := range file.Webhooks {
		names = append(names, name)
	}
	slices.Sort(names)
	dir := filepath.Dir(path)
	var (
		hooks []Config
		errs  []error
	)
	for _, name := range names {
		h, p := file.Webhooks[name], pos.hooks[name]
		// bad records a problem; format's verbs may include one %w.
		bad := func(line int, format string, args ...any) {
			if line == 0 {
				line = p.line
			}
			errs = append(errs, fmt.Errorf("%s: webhook %q: "+format, append([]any{at(line), name}, args...)...))
		}
		if !validName.MatchString(name) {
			bad(0, "not a valid name: use 1 to 64 letters, digits, '-' and '_' (it names the JetStream consumer jetmail-webhook-NAME)")
			continue
		}
		if h == nil {
			bad(0, "no settings; want url and secret_file")
			continue
		}
		c := Config{Name: name, URL: h.URL}
		if err := checkURL(h.URL); err != nil {
			bad(p.keys["url"], "%w", err)
		}
		if h.SecretFile == "" {
			bad(0, "secret_file is missing (a file holding \"whsec_\" + base64 of the signing key)")
		} else {
			sf := h.SecretFile
			if !filepath.IsAbs(sf) {
				sf = filepath.Join(dir, sf)
			}
			key, err := readSecret(sf)
			if err != nil {
				bad(p.keys["secret_file"], "secret_file: %w", err)
			}
			c.Secret = key
		}
		for i, s := range h.States {
			if _, err := checkStates([]string{s}); err != nil {
				line := p.keys["states"]
				if i < len(p.states) {
					line = p.states[i]
				}
				bad(line, "%w", err)
			}
		}
		c.States, _ = checkStates(h.States)
		hooks = append(hooks, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return hooks, nil
}

// yamlError is config.YAMLError for the webhooks file, in words of its
// keys.
func yamlError(path string, err error) error {
	return config.YAMLError(path, err, func(m string) string {
		switch {
		case strings.Contains(m, "not found in type webhook.fileHook"):
			m = strings.Replace(m, "not found in type webhook.fileHook", "is not a webhook setting", 1) +
				" (known: url, secret_file, states)"
		case strings.Contains(m, "not found in type webhook.webhooksFile"):
			m = strings.Replace(m, "not found in type webhook.webhooksFile", "is not known", 1) +
				"; the file has one key, webhooks"
		}
		m = strings.ReplaceAll(m, "webhook.fileHook", "a webhook")
		return strings.ReplaceAll(m, "webhook.webhooksFile", "the file")
	})
}

// positions are the lines of the parts of a webhooks file, for messages.
type positions struct {
	top   int // the webhooks key
	hooks map[string]hookPosition
}

type hookPosition struct {
	line   int            // the name
	keys   map[string]int // each setting's value
	states []int          // each state
}

// hookPositions finds the line of each webhook, setting and state.
func hookPositions(doc *yaml.Node) positions {
	pos := positions{hooks: map[string]hookPosition{}}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return pos
	}
	top := doc.Content[0].Content
	for i := 0; i+1 < len(top); i += 2 {
		if top[i].Value != "webhooks" {
			continue
		}
		pos.top = top[i].Line
		hs := top[i+1]
		if hs.Kind != yaml.MappingNode {
			continue
		}
		for j := 0; j+1 < len(hs.Content); j += 2 {
			hp := hookPosition{line: hs.Content[j].Line, keys: map[string]int{}}
			if v := hs.Content[j+1]; v.Kind == yaml.MappingNode {
				for k := 0; k+1 < len(v.Content); k += 2 {
					key, val := v.Content[k], v.Content[k+1]
					hp.keys[key.Value] = val.Line
					if key.Value == "states" && val.Kind == yaml.SequenceNode {
						for _, s := range val.Content {
							hp.states = append(hp.states, s.Line)
						}
					}
				}
			}
			pos.hooks[hs.Content[j].Value] = hp
		}
	}
	return pos
}
