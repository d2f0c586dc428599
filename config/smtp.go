package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// TLSMode is the TLS policy of an SMTP connection, from the URL's tls
// parameter (contract §5).
type TLSMode string

// The TLS modes. Implicit TLS (smtps://) is not a mode: it is always
// encrypted.
const (
	// TLSOpportunistic uses STARTTLS when the server offers it. The default.
	TLSOpportunistic TLSMode = "opportunistic"
	// TLSRequired refuses to send when the server does not offer STARTTLS.
	TLSRequired TLSMode = "required"
	// TLSNone never uses STARTTLS.
	TLSNone TLSMode = "none"
)

// The defaults of an SMTP connection's settings.
const (
	// DefaultPoolSize is the default largest number of open sessions.
	DefaultPoolSize = 4
	// DefaultSMTPTimeout is the default bound of each SMTP command.
	DefaultSMTPTimeout = 30 * time.Second
	// DefaultIdleTimeout is the default time a pooled session may sit idle.
	DefaultIdleTimeout = 30 * time.Second
)

// SMTP is one named SMTP connection: where to send, how to secure and
// authenticate, how many sessions to keep, how fast to send, and which
// senders it takes. The zero value of each field but URL means its
// default; WithDefaults fills them in and Validate checks the whole.
type SMTP struct {
	// URL is smtp://[user[:pass]@]host[:port][?tls=required|none] (port 25
	// by default; STARTTLS when offered unless tls=none) or
	// smtps://[user[:pass]@]host[:port] (implicit TLS, port 465).
	URL string
	// Password, when set, replaces the URL's password; the command line
	// fills it from a file or an environment variable so that the URL holds
	// no secret.
	Password string
	// CAFile is a PEM file of certificate authorities to verify the server
	// with, instead of the system roots.
	CAFile string
	// InsecureSkipVerify turns certificate verification off. Only for
	// tests and lab relays; never the default.
	InsecureSkipVerify bool
	// PoolSize is the largest number of SMTP sessions a worker keeps open
	// to the server. Default DefaultPoolSize (4).
	PoolSize int
	// Timeout bounds each SMTP command and the dial. Default 30s.
	Timeout time.Duration
	// IdleTimeout closes a pooled session that has not been used for this
	// long. Default 30s.
	IdleTimeout time.Duration
	// From is the default sender of requests without From.
	From string
	// AllowedSenders, when not empty, lists the only senders this
	// connection accepts: addresses, or "@domain" for a whole domain.
	// Other senders get 403 and are not sent.
	AllowedSenders []string
	// HELO is the name sent in EHLO. Default: the host name.
	HELO string
	// RateLimit caps the messages per second a worker sends through the
	// connection, shared by all its sessions (bursts of up to a tenth of a
	// second's worth). Zero means no limit. Relays throttle (421, 454)
	// clients that send too fast; staying under their rate avoids that.
	RateLimit float64
	// NoPipelining sends one command per round trip even when the server
	// offers PIPELINING (for benchmarks and broken servers).
	NoPipelining bool
	// NoChunking sends the message with DATA even when the server offers
	// CHUNKING (RFC 3030), which jetmail otherwise uses with PIPELINING:
	// BDAT sends MAIL, RCPT and the whole message in one write.
	NoChunking bool
	// OnUncertain is what follows an attempt that ended after the final
	// "." of DATA without a reply, when the relay may have the message:
	// OnUncertainRetry (the default: at least once, with the same
	// Message-ID so receivers can drop the copy) or OnUncertainAssumeSent
	// (at most once: the message ends sent, marked Uncertain).
	OnUncertain string
	// DKIM are the connection's signing keys (contract §11). Mail whose
	// From domain is a key's domain (or a subdomain) is signed with every
	// key of that domain; none: nothing is signed.
	DKIM []DKIMKey
}

// The values of SMTP.OnUncertain.
const (
	OnUncertainRetry      = "retry"
	OnUncertainAssumeSent = "assume-sent"
)

// DKIMKey is one DKIM signing key of a connection: the domain it signs
// for, its selector (the DNS record is at <selector>._domainkey.<domain>)
// and the PEM file of its private key.
type DKIMKey struct {
	Domain, Selector, KeyFile string
}

// WithDefaults returns c with its zero settings replaced by their defaults.
func (c SMTP) WithDefaults() SMTP {
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultSMTPTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	return c
}

// Validate checks every setting without dialing: the URL, the CA file, and
// that the numbers are in range. Its errors name the setting and never
// contain the password.
func (c SMTP) Validate() error {
	var errs []error
	if c.PoolSize < 0 {
		errs = append(errs, fmt.Errorf("pool size must be positive, got %d", c.PoolSize))
	}
	if c.RateLimit < 0 {
		errs = append(errs, fmt.Errorf("rate limit must not be negative, got %g", c.RateLimit))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout must not be negative, got %s", c.Timeout))
	}
	if c.IdleTimeout < 0 {
		errs = append(errs, fmt.Errorf("idle timeout must not be negative, got %s", c.IdleTimeout))
	}
	if _, err := c.Target(); err != nil {
		errs = append(errs, err)
	}
	switch c.OnUncertain {
	case "", OnUncertainRetry, OnUncertainAssumeSent:
	default:
		errs = append(errs, fmt.Errorf("on_uncertain must be %s or %s, got %q", OnUncertainRetry, OnUncertainAssumeSent, c.OnUncertain))
	}
	for i, k := range c.DKIM {
		if k.Domain == "" || k.Selector == "" || k.KeyFile == "" {
			errs = append(errs, fmt.Errorf("dkim key %d: domain, selector and key_file are all required", i+1))
		}
	}
	return errors.Join(errs...)
}

// Target is an SMTP connection's URL resolved into what a dial needs.
type Target struct {
	// Host and Port are the server's address.
	Host string
	Port int
	// User and Pass are the credentials; no AUTH when User is empty.
	User, Pass string
	// ImplicitTLS is set for smtps:// URLs.
	ImplicitTLS bool
	// TLSMode is the STARTTLS policy of smtp:// URLs.
	TLSMode TLSMode
	// TLSConfig verifies the server: its name, the roots (system or the
	// CA file) and TLS 1.2 at least.
	TLSConfig *tls.Config
}

// Target resolves c's URL, password and CA file.
func (c SMTP) Target() (*Target, error) {
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("smtp url: %w", redactURLError(err))
	}
	t := &Target{Host: u.Hostname(), TLSMode: TLSOpportunistic}
	switch u.Scheme {
	case "smtp":
		t.Port = 25
	case "smtps":
		t.Port, t.ImplicitTLS = 465, true
	default:
		return nil, fmt.Errorf("smtp url: scheme must be smtp or smtps, got %q", u.Scheme)
	}
	if t.Host == "" {
		return nil, errors.New("smtp url: no host")
	}
	if p := u.Port(); p != "" {
		if t.Port, err = strconv.Atoi(p); err != nil || t.Port < 1 || t.Port > 65535 {
			return nil, fmt.Errorf("smtp url: bad port %q", p)
		}
	}
	if u.User != nil {
		t.User = u.User.Username()
		t.Pass, _ = u.User.Password()
	}
	if c.Password != "" {
		t.Pass = c.Password
	}
	q := u.Query()
	switch m := TLSMode(strings.ToLower(q.Get("tls"))); m {
	case "":
	case TLSOpportunistic, TLSRequired, TLSNone:
		if t.ImplicitTLS && m == TLSNone {
			return nil, errors.New("smtp url: tls=none contradicts smtps://")
		}
		t.TLSMode = m
	default:
		return nil, fmt.Errorf("smtp url: tls must be required, opportunistic or none, got %q", m)
	}
	t.TLSConfig = &tls.Config{ServerName: t.Host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in for tests
	caFile := c.CAFile
	if caFile == "" {
		caFile = q.Get("ca_file")
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("smtp ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("smtp ca file %s: no PEM certificate in it", caFile)
		}
		t.TLSConfig.RootCAs = pool
	}
	return t, nil
}

// redactURLError drops the URL (which may hold a password) from a url
// parse error.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// RedactURL returns u with its password replaced by "xxxxx", for logs.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable url)"
	}
	return p.Redacted()
}

// ConnectionName is the name of the connection a request names: "default"
// when it names none.
func ConnectionName(n string) string {
	if n == "" {
		return "default"
	}
	return n
}

// RedactURLs hides the passwords in a comma-separated list of URLs, such
// as --nats-url takes, for messages and logs. Entries without a scheme are
// read as nats:// URLs and shown without it.
func RedactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		s := p
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		u, err := url.Parse(s)
		if err != nil {
			parts[i] = "(unparsable url)"
			continue
		}
		r := u.Redacted()
		if !strings.Contains(p, "://") {
			r = strings.TrimPrefix(r, "nats://")
		}
		parts[i] = r
	}
	return strings.Join(parts, ",")
}
