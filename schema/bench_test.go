package schema_test

import (
	"encoding/base64"
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jetmail/jetmail/schema"
)

// connectorPayload is a request as the SMTP connector's Send Email action
// writes it (string booleans, ';'-separated recipients, display names),
// with a text body of about bodyLen bytes and, when attLen > 0, one base64
// attachment of attLen bytes.
func connectorPayload(b *testing.B, bodyLen, attLen int) []byte {
	b.Helper()
	line := "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
	p := map[string]any{
		"Id":         "order-10023-shipped",
		"To":         "\"Anna Nowak\" <anna.nowak@example.com>;bartek@example.org",
		"CC":         "",
		"Bcc":        "archive@example.com",
		"From":       "\"Shop, Orders\" <orders@example.com>",
		"Subject":    "Your order 10023 has shipped — Zamówienie wysłane",
		"Body":       strings.Repeat(line, bodyLen/len(line)+1)[:bodyLen],
		"IsHtml":     "false",
		"Importance": "high",
		"Headers":    map[string]string{"List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
		"Metadata":   map[string]string{"tenant": "acme", "order": "10023"},
	}
	if attLen > 0 {
		raw := make([]byte, attLen)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range raw {
			raw[i] = byte(r.Uint32())
		}
		p["Attachments"] = []map[string]string{{
			"ContentData":             base64.StdEncoding.EncodeToString(raw),
			"ContentType":             "application/pdf",
			"ContentTransferEncoding": "base64",
			"FileName":                "faktura-10023.pdf",
		}}
	}
	data, err := json.Marshal(p)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkDecodeValidate is what a worker does with each payload before
// building the message: lenient decoding and the contract's rules.
func BenchmarkDecodeValidate(b *testing.B) {
	for _, c := range []struct {
		name            string
		bodyLen, attLen int
	}{
		{"connector-2KB", 1600, 0},
		{"attachment-100KB", 1600, 100 << 10},
	} {
		b.Run(c.name, func(b *testing.B) {
			data := connectorPayload(b, c.bodyLen, c.attLen)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				req, err := schema.Decode(data)
				if err != nil {
					b.Fatal(err)
				}
				if err := req.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
