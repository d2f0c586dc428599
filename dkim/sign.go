package dkim

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignOptions are the settings of Sign that do not come from the keys.
type SignOptions struct {
	// Headers are the header fields to sign, in the order of the h= tag,
	// in any case. A field is signed as often as the message has it, and
	// not at all when the message lacks it. From must be among them (RFC
	// 6376 §5.4).
	Headers []string
	// Oversign are fields listed in h= once more than the message has
	// them, so that a verifier sees a copy added in transit, above or
	// below the signed one, and fails the signature (RFC 6376 §8.15).
	// From is the usual one.
	Oversign []string
	// Time is the signature's time (t=); zero means now.
	Time time.Time
}

// Sign returns one DKIM-Signature header field for each key (RFC 6376,
// rsa-sha256 or ed25519-sha256 by the key, canonicalization
// relaxed/relaxed), CRLF-terminated, to be written in front of message.
// message is a complete message with CRLF line endings, exactly as it will
// be sent: a bare CR or LF is an error, since the SMTP layer would change
// it after signing. Each signature is made over the field exactly as it is
// written, folds included, so lines stay within 78 characters; the body
// hash is computed once for all keys. With no keys Sign returns nothing.
func Sign(message []byte, keys []*Key, opts SignOptions) ([]byte, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	if err := checkLineEnds(message); err != nil {
		return nil, err
	}
	header, body := splitMessage(message)
	fields := parseFields(header)
	names, canon := signedHeaders(fields, opts)
	if !containsFold(names, "from") {
		return nil, errors.New("dkim sign: the message has no From field or From is not among the fields to sign")
	}
	bh := relaxedBodyHash(body)
	t := opts.Time
	if t.IsZero() {
		t = time.Now()
	}
	var out []byte
	for _, k := range keys {
		sig, err := signWith(k, names, canon, bh[:], t)
		if err != nil {
			return nil, err
		}
		out = append(out, sig...)
	}
	return out, nil
}

// signWith returns the DKIM-Signature field of key k.
func signWith(k *Key, names []string, canon []byte, bh []byte, t time.Time) ([]byte, error) {
	signer := k.Signer()
	var opt crypto.SignerOpts
	switch k.Algorithm() {
	case RSASHA256:
		opt = crypto.SHA256
	case Ed25519SHA256:
		opt = crypto.Hash(0) // PureEdDSA over the SHA-256 hash (RFC 8463 §3)
	default:
		return nil, fmt.Errorf("dkim sign: %w: key %s", ErrUnsupportedKey, k)
	}
	var f folder
	f.b.WriteString("DKIM-Signature:")
	f.col = f.b.Len()
	for _, tag := range []string{"v=1", "a=" + k.Algorithm(), "c=relaxed/relaxed", "d=" + k.Domain, "s=" + k.Selector,
		"t=" + strconv.FormatInt(t.Unix(), 10)} {
		f.token(" ", tag+";")
	}
	// h= may be folded after each colon (RFC 6376 §3.5); the fold is part
	// of what is signed, as every fold here is.
	for i, n := range names {
		sep, tok := "", n+":"
		if i == 0 {
			sep, tok = " ", "h="+tok
		}
		if i == len(names)-1 {
			tok = strings.TrimSuffix(tok, ":") + ";"
		}
		f.token(sep, tok)
	}
	f.token(" ", "bh="+base64.StdEncoding.EncodeToString(bh)+";")
	f.token(" ", "b=")
	unsigned := f.b.String()

	h := sha256.New()
	h.Write(canon)
	h.Write([]byte(relaxedHeader(unsigned)))
	sig, err := signer.Sign(rand.Reader, h.Sum(nil), opt)
	if err != nil {
		return nil, fmt.Errorf("dkim sign with %s: %w", k, err)
	}
	// The value of b= may hold folding white space anywhere; verifiers
	// remove the value before they hash the field.
	b64 := base64.StdEncoding.EncodeToString(sig)
	for b64 != "" {
		n := min(len(b64), max(maxLine-f.col, 1))
		if n < 8 && len(b64) > n {
			f.fold()
			n = min(len(b64), maxLine-f.col)
		}
		f.b.WriteString(b64[:n])
		f.col += n
		b64 = b64[n:]
	}
	f.b.WriteString("\r\n")
	return []byte(f.b.String()), nil
}

// maxLine is the line length the signature fields keep to (RFC 5322
// §2.1.1), without the CRLF.
const maxLine = 78

// folder writes a header field in tokens, folding (CRLF and a space)
// before a token that would pass maxLine.
type folder struct {
	b   strings.Builder
	col int
}

// token writes sep and tok, or a fold and tok when they do not fit.
func (f *folder) token(sep, tok string) {
	if f.col+len(sep)+len(tok) > maxLine {
		f.fold()
	} else {
		f.b.WriteString(sep)
		f.col += len(sep)
	}
	f.b.WriteString(tok)
	f.col += len(tok)
}

func (f *folder) fold() {
	f.b.WriteString("\r\n ")
	f.col = 1
}

// checkLineEnds reports a CR or LF that is not part of a CRLF.
func checkLineEnds(message []byte) error {
	for i := 0; i < len(message); i++ {
		switch message[i] {
		case '\r':
			if i+1 >= len(message) || message[i+1] != '\n' {
				return fmt.Errorf("dkim sign: bare CR at byte %d; the message must use CRLF line endings", i)
			}
			i++
		case '\n':
			return fmt.Errorf("dkim sign: bare LF at byte %d; the message must use CRLF line endings", i)
		}
	}
	return nil
}

// splitMessage splits message into its header block (each field with its
// CRLF) and its body (after the empty line).
func splitMessage(message []byte) (header, body []byte) {
	if bytes.HasPrefix(message, []byte("\r\n")) {
		return nil, message[2:]
	}
	if i := bytes.Index(message, []byte("\r\n\r\n")); i >= 0 {
		return message[:i+2], message[i+4:]
	}
	return message, nil
}

// field is one header field: its name in lower case and the field as
// written, continuation lines included, without the final CRLF.
type field struct {
	name string
	raw  string
}

func parseFields(header []byte) []field {
	var fields []field
	start := -1 // of the field being read
	flush := func(end int) {
		if start >= 0 {
			raw := string(header[start:end])
			name, _, _ := strings.Cut(raw, ":")
			fields = append(fields, field{name: strings.ToLower(strings.TrimRight(name, " \t")), raw: raw})
		}
	}
	for i := 0; i < len(header); {
		end := bytes.Index(header[i:], []byte("\r\n"))
		if end < 0 {
			end = len(header) - i
		}
		if c := header[i]; c != ' ' && c != '\t' || start < 0 {
			flush(max(i-2, 0))
			start = i
		}
		i += end + 2
	}
	flush(len(bytes.TrimSuffix(header, []byte("\r\n"))))
	return fields
}

// signedHeaders returns the h= list and the canonical form of the fields
// it names, taken from the bottom up for a name that occurs more than once
// (RFC 6376 §5.4.2).
func signedHeaders(fields []field, opts SignOptions) (names []string, canon []byte) {
	count := map[string]int{}
	for _, f := range fields {
		count[f.name]++
	}
	seen := map[string]bool{}
	for _, h := range opts.Headers {
		lh := strings.ToLower(h)
		if seen[lh] {
			continue
		}
		seen[lh] = true
		for range count[lh] {
			names = append(names, h)
		}
	}
	names = append(names, opts.Oversign...)
	next := map[string]int{} // how many of each name were taken
	var b bytes.Buffer
	for _, n := range names {
		ln := strings.ToLower(n)
		skip := next[ln]
		next[ln]++
		for i := len(fields) - 1; i >= 0; i-- {
			if fields[i].name != ln {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			b.WriteString(relaxedHeader(fields[i].raw))
			b.WriteString("\r\n")
			break
		}
	}
	return names, b.Bytes()
}

func containsFold(names []string, name string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// relaxedHeader is the relaxed canonical form of one header field (RFC
// 6376 §3.4.2), without CRLF: the name in lower case, the value unfolded,
// runs of white space reduced to one space, none around the colon or at
// the end.
func relaxedHeader(raw string) string {
	name, value, _ := strings.Cut(raw, ":")
	value = strings.ReplaceAll(value, "\r\n", "")
	var b strings.Builder
	b.Grow(len(raw))
	b.WriteString(strings.ToLower(strings.TrimRight(name, " \t")))
	b.WriteByte(':')
	space, started := false, false
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c == ' ' || c == '\t' {
			space = true
			continue
		}
		if space && started {
			b.WriteByte(' ')
		}
		space, started = false, true
		b.WriteByte(c)
	}
	return b.String()
}

// relaxedBodyHash is the SHA-256 of the relaxed canonical body (RFC 6376
// §3.4.4): runs of white space in a line reduced to one space, none at
// the end of a line, no empty lines at the end, a CRLF after the last
// line.
func relaxedBodyHash(body []byte) [sha256.Size]byte {
	h := sha256.New()
	crlf := []byte("\r\n")
	blank := 0 // empty lines not written yet: they count only if a line follows
	var buf []byte
	for len(body) > 0 {
		line := body
		if i := bytes.Index(body, crlf); i >= 0 {
			line, body = body[:i], body[i+2:]
		} else {
			body = nil
		}
		buf = buf[:0]
		space := false
		for _, c := range line {
			if c == ' ' || c == '\t' {
				space = true
				continue
			}
			if space {
				buf = append(buf, ' ')
				space = false
			}
			buf = append(buf, c)
		}
		if len(buf) == 0 {
			blank++
			continue
		}
		for ; blank > 0; blank-- {
			h.Write(crlf)
		}
		h.Write(buf)
		h.Write(crlf)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}
