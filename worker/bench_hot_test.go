package worker

import (
	"context"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jetmail/jetmail/config"
	"github.com/jetmail/jetmail/internal/smtpsink"
	"github.com/jetmail/jetmail/schema"
)

// hotRequest is a validated request like those of the benchmarks: a text
// body of about 2 KB and, with attachments, a 100 KB PDF and an inline
// PNG in an HTML message.
func hotRequest(b *testing.B, attachments bool) *schema.Request {
	b.Helper()
	line := "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\n"
	req := &schema.Request{
		Id:         "order-10023-shipped",
		To:         schema.AddressList{`"Anna Nowak" <anna.nowak@example.com>`, "bartek@example.org"},
		From:       `"Shop, Orders" <orders@example.com>`,
		Subject:    "Your order 10023 has shipped",
		Body:       strings.Repeat(line, 27),
		Importance: schema.ImportanceHigh,
		Headers:    map[string]string{"List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
	}
	if attachments {
		r := rand.New(rand.NewPCG(1, 2))
		blob := func(n int) string {
			raw := make([]byte, n)
			for i := range raw {
				raw[i] = byte(r.Uint32())
			}
			return base64.StdEncoding.EncodeToString(raw)
		}
		req.IsHtml = true
		req.Body = "<html><body><p>" + strings.Repeat(line, 27) + `</p><img src="cid:logo"></body></html>`
		req.Attachments = []schema.Attachment{
			{FileName: "faktura-10023.pdf", ContentType: "application/pdf", ContentTransferEncoding: "base64", ContentData: blob(100 << 10)},
			{FileName: "logo.png", ContentType: "image/png", ContentTransferEncoding: "base64", ContentData: blob(4 << 10), ContentId: "logo"},
		}
	}
	if err := req.Validate(); err != nil {
		b.Fatal(err)
	}
	return req
}

// BenchmarkBuild renders a request as MIME and writes it out, as a
// delivery does (the SMTP DATA writer replaced by io.Discard).
func BenchmarkBuild(b *testing.B) {
	for _, c := range []struct {
		name        string
		attachments bool
	}{{"small", false}, {"attachments", true}} {
		b.Run(c.name, func(b *testing.B) {
			req := hotRequest(b, c.attachments)
			opts := BuildOptions{Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
			var size countingWriter
			env, err := Build(req, opts)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := env.Msg.WriteTo(&size); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				env, err := Build(req, opts)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := env.Msg.WriteTo(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// BenchmarkSMTPTransaction is one message (built once) sent on a pooled,
// already open session to the counting sink: with PIPELINING and BDAT (one
// round trip), with PIPELINING and DATA (two), and one command at a time.
func BenchmarkSMTPTransaction(b *testing.B) {
	for _, c := range []struct {
		name                     string
		noPipelining, noChunking bool
	}{{"chunked", false, false}, {"pipelined", false, true}, {"sequential", true, true}} {
		b.Run(c.name, func(b *testing.B) {
			sink, err := smtpsink.Start("127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer sink.Close()
			tr, err := NewSMTPTransport(map[string]config.SMTP{"default": {URL: sink.URL(), PoolSize: 1, NoPipelining: c.noPipelining, NoChunking: c.noChunking}}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			env, err := Build(hotRequest(b, false), BuildOptions{})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := tr.Send(ctx, env); err != nil { // opens the session
				b.Fatal(err)
			}
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if _, err := tr.Send(ctx, env); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			if sink.Connections() != 1 {
				b.Errorf("%d connections, want 1 pooled session", sink.Connections())
			}
			if got := sink.Messages(); got != int64(b.N)+1 {
				b.Errorf("sink received %d messages, want %d", got, b.N+1)
			}
		})
	}
}
