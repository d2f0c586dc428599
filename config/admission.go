package config

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jetmail/jetmail/schema"
)

// Sender is what a connection says about senders.
type Sender struct {
	// DefaultFrom is the sender of requests without From. Empty means such
	// requests are invalid (400).
	DefaultFrom string
	// Allowed, when not empty, lists the only senders the connection
	// accepts: addresses, or "@domain" for a whole domain (any case).
	Allowed []string
}

// Allows reports whether addr may send through the connection: every
// sender when Allowed is empty, else an exact address or an "@domain".
func (s Sender) Allows(addr string) bool {
	if len(s.Allowed) == 0 {
		return true
	}
	addr = strings.ToLower(addr)
	for _, a := range s.Allowed {
		a = strings.ToLower(strings.TrimSpace(a))
		if strings.HasPrefix(a, "@") && strings.HasSuffix(addr, a) || a == addr {
			return true
		}
	}
	return false
}

// SenderOf returns the sender policy of an SMTP connection.
func SenderOf(c SMTP) Sender { return Sender{DefaultFrom: c.From, Allowed: c.AllowedSenders} }

// OutboxSender is the sender policy of the .eml outbox, which jetmail uses
// when no SMTP connection is configured: any sender, and a default one so
// that `jetmail send --to x` works while trying jetmail out.
var OutboxSender = Sender{DefaultFrom: "jetmail@localhost"}

// ErrNoSender is the reason a request is invalid when neither it nor its
// connection names a sender.
var ErrNoSender = errors.New("no From and the connection has no default sender")

// SenderNotAllowedError is the reason a request is refused with 403: its
// connection does not allow its sender.
type SenderNotAllowedError struct {
	// From is the sender's bare address; Connection the connection's name.
	From, Connection string
}

// Error says which sender the connection refuses.
func (e *SenderNotAllowedError) Error() string {
	return fmt.Sprintf("sender %s is not allowed on connection %q", e.From, e.Connection)
}

// Admission decides whether a request is admitted, the same way wherever
// it is asked: the worker before it sends, the HTTP API before it
// publishes. The zero value admits every request that is valid under
// schema.DefaultLimits() and leaves Template, Connection and From unchecked.
// It is safe for concurrent use once built.
type Admission struct {
	// Limits bound requests; zero fields take their defaults.
	Limits schema.Limits
	// Templates render a request's Template. Nil means Template is left
	// unrendered (the worker renders it; the API then cannot check it).
	Templates Templates
	// Senders are the connections' sender policies by connection name. Nil
	// means Connection and From are not checked.
	Senders map[string]Sender
	// NoOneClick refuses requests with "Unsubscribe": true (400), for a
	// service whose one-click endpoint is not configured (no public URL
	// and unsubscribe secret). The zero value admits them.
	NoOneClick bool
}

// errNoOneClick is the field error of a one-click request where no
// one-click endpoint is configured.
const errNoOneClick = `"Unsubscribe": true needs jetmail's one-click endpoint: configure --public-url and --unsubscribe-secret-file`

// Admit is Parse followed by CheckSender (when Senders are known): the
// whole admission of a request. The error is a *schema.ValidationError
// (status 400; 413 over a size limit at the HTTP API) or a
// *SenderNotAllowedError (status 403). The request is returned with the
// error whenever the payload could be decoded, so that a result event can
// still carry its Metadata.
func (a *Admission) Admit(data []byte) (*schema.Request, error) {
	req, err := a.Parse(data)
	if err != nil || a.Senders == nil {
		return req, err
	}
	if _, err := a.CheckSender(req); err != nil {
		return req, err
	}
	return req, nil
}

// Parse decodes and validates a request payload against the limits,
// renders its template and validates the rendered request again (no CR or
// LF in the subject, the limits). Its error is a *schema.ValidationError.
// The request is returned with the error whenever the payload could be
// decoded; when it could not (a value of the wrong type, or a payload over
// MaxRequestBytes), a request with only what schema.Identify could read,
// so that the 400 still carries the request's own Id (and, under the size
// limit, its Metadata).
func (a *Admission) Parse(data []byte) (*schema.Request, error) {
	lim := a.Limits.WithDefaults()
	if n := len(data); lim.MaxRequestBytes > 0 && n > lim.MaxRequestBytes {
		return schema.Identify(data, false), &schema.ValidationError{Fields: []schema.FieldError{{
			Message:  fmt.Sprintf("request is %d bytes, more than the limit of %d", n, lim.MaxRequestBytes),
			TooLarge: true,
		}}}
	}
	req, err := schema.Decode(data)
	if err != nil {
		return schema.Identify(data, true), err
	}
	if err := req.ValidateLimits(lim); err != nil {
		return req, err
	}
	if a.NoOneClick && req.Unsubscribe.OneClick {
		return req, &schema.ValidationError{Fields: []schema.FieldError{{Field: "Unsubscribe", Message: errNoOneClick}}}
	}
	if req.Template != "" && a.Templates != nil {
		if err := a.Templates.Apply(req); err != nil {
			return req, err
		}
		if err := req.ValidateLimits(lim); err != nil {
			return req, err
		}
	}
	return req, nil
}

// CheckSender decides about a valid request's connection and sender: an
// unknown connection, or no usable sender, makes the request invalid (a
// *schema.ValidationError); a sender that the connection does not allow is
// a *SenderNotAllowedError. It returns the sender's bare address. With nil
// Senders every connection is known and has no default sender.
func (a *Admission) CheckSender(req *schema.Request) (string, error) {
	conn := ConnectionName(req.Connection)
	policy, ok := a.Senders[conn]
	if !ok && a.Senders != nil {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{
			Field: "Connection", Message: fmt.Sprintf("unknown connection %q", req.Connection)}}}
	}
	from := req.From
	if from == "" {
		from = policy.DefaultFrom
	}
	if from == "" {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{Field: "From", Message: ErrNoSender.Error()}}}
	}
	addr, err := schema.ParseAddress(from)
	if err != nil {
		return "", &schema.ValidationError{Fields: []schema.FieldError{{Field: "From", Message: fmt.Sprintf("from: %v", err)}}}
	}
	if !policy.Allows(addr.Address) {
		return "", &SenderNotAllowedError{From: addr.Address, Connection: conn}
	}
	return addr.Address, nil
}

// DefaultFrom is the default sender of the request's connection, or "".
func (a *Admission) DefaultFrom(req *schema.Request) string {
	return a.Senders[ConnectionName(req.Connection)].DefaultFrom
}

// NewAdmission is the admission of a worker configured with these limits,
// templates folder (empty: none) and SMTP connections; with no connection
// it is the outbox's (OutboxSender). A worker and an HTTP API served beside
// it each build one from the same settings, and so decide alike.
func NewAdmission(lim schema.Limits, templatesDir string, conns map[string]SMTP) (*Admission, error) {
	tmpl, err := LoadTemplates(templatesDir)
	if err != nil {
		return nil, err
	}
	a := &Admission{Limits: lim, Templates: tmpl, Senders: map[string]Sender{}}
	if len(conns) == 0 {
		a.Senders["default"] = OutboxSender
	}
	for name, c := range conns {
		a.Senders[name] = SenderOf(c)
	}
	return a, nil
}
