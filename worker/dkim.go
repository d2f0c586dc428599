package worker

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/idna"

	"github.com/jetmail/jetmail/dkim"
)

// dkimFields are the header fields a DKIM signature covers when the
// message has them (contract §11), in the order of its h= tag. From is
// also listed once more than it occurs (over-signed), so that a From
// added in transit breaks the signature.
var dkimFields = []string{
	"From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID",
	"MIME-Version", "Content-Type", "List-Unsubscribe", "List-Unsubscribe-Post",
}

// DKIMSigner signs messages with the DKIM keys of one connection (contract
// §11). A message whose From domain is a key's domain, or a subdomain of
// it, gets one DKIM-Signature per key of that domain, so rsa-sha256 and
// ed25519-sha256 signatures can be combined; when keys of several
// matching domains exist (example.com and mail.example.com), those of the
// closest domain sign. Mail from any other domain goes unsigned.
//
// Signatures use relaxed/relaxed canonicalization and cover the fields of
// dkimFields the message has, with From over-signed. They are made (by
// dkim.Sign) over the message exactly as it is rendered for the transport,
// once everything else about it is final. go-mail's own signer is not
// used: it hashes the DKIM-Signature field unfolded but writes it with a
// fold inside any tag longer than a line, which adds a space that
// verifiers hash; so every signature whose h= tag is that long fails (here:
// any message with Cc, Reply-To or List-Unsubscribe). See go-mail v0.8.1
// internal/dkim/dkim.go:364-371 and dkim_header.go:210-252. It also takes
// one key per message (msg.go:182).
//
// A DKIMSigner is immutable and safe for concurrent use. The nil
// *DKIMSigner signs nothing.
type DKIMSigner struct {
	domains []dkimDomain // the closest (longest) domain first
	signed  *prometheus.CounterVec
}

// dkimDomain is the keys of one signing domain.
type dkimDomain struct {
	name string
	keys []*dkim.Key
}

// NewDKIMSigner returns a signer for keys (those of one connection; none
// gives a signer that signs nothing) that counts the messages it signs in
// metrics.DKIMSigned (a nil metrics counts nowhere). Two keys with the same
// domain and selector are an error.
func NewDKIMSigner(keys []*dkim.Key, metrics *Metrics) (*DKIMSigner, error) {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	s := &DKIMSigner{signed: metrics.DKIMSigned}
	seen := map[string]bool{}
	for i, k := range keys {
		if k == nil || k.Signer() == nil {
			return nil, fmt.Errorf("dkim key %d: no key", i)
		}
		if seen[k.Name()] {
			return nil, fmt.Errorf("dkim key %s: given twice", k.Name())
		}
		seen[k.Name()] = true
		j := slices.IndexFunc(s.domains, func(d dkimDomain) bool { return d.name == k.Domain })
		if j < 0 {
			s.domains = append(s.domains, dkimDomain{name: k.Domain})
			j = len(s.domains) - 1
		}
		s.domains[j].keys = append(s.domains[j].keys, k)
	}
	slices.SortStableFunc(s.domains, func(a, b dkimDomain) int { return cmp.Compare(len(b.name), len(a.name)) })
	return s, nil
}

// keysFor returns the signing domain and keys for mail from addr, or
// nothing when addr's domain has no key.
func (s *DKIMSigner) keysFor(addr string) (string, []*dkim.Key) {
	if s == nil {
		return "", nil
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", nil
	}
	domain, err := idna.Lookup.ToASCII(strings.TrimSuffix(addr[at+1:], "."))
	if err != nil {
		return "", nil
	}
	for _, d := range s.domains {
		if domain == d.name || strings.HasSuffix(domain, "."+d.name) {
			return d.name, d.keys
		}
	}
	return "", nil
}

// LogValue lists the keys by domain, selector and algorithm.
func (s *DKIMSigner) LogValue() slog.Value {
	if s == nil {
		return slog.StringValue("none")
	}
	var attrs []slog.Attr
	for _, d := range s.domains {
		var keys []string
		for _, k := range d.keys {
			keys = append(keys, k.Selector+" ("+k.Algorithm()+")")
		}
		attrs = append(attrs, slog.String(d.name, strings.Join(keys, ", ")))
	}
	return slog.GroupValue(attrs...)
}

// dkimSigning is what Build decided about signing one message: the
// signer, the domain (d=) and its keys.
type dkimSigning struct {
	signer *DKIMSigner
	domain string
	keys   []*dkim.Key
}

// sign returns raw, a rendered message, with one DKIM-Signature field per
// key in front of it, and counts the message as signed. raw is not
// changed: the signatures cover it byte for byte, so it must go out as it
// is (the SMTP layer only dot-stuffs, which the receiver undoes).
func (d *dkimSigning) sign(raw []byte, now time.Time) ([]byte, error) {
	sigs, err := dkim.Sign(raw, d.keys, dkim.SignOptions{Headers: dkimFields, Oversign: []string{"From"}, Time: now})
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(sigs)+len(raw))
	out = append(append(out, sigs...), raw...)
	d.signer.signed.WithLabelValues(d.domain).Inc()
	return out, nil
}
