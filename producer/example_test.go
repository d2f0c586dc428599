package producer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jetmail/jetmail/producer"
	"github.com/jetmail/jetmail/schema"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Send one message and wait for its outcome.
func Example() {
	url, stop := runJetStream(true) // a server on which `jetmail worker` has run
	defer stop()

	nc, err := nats.Connect(url) // nats.DefaultURL for `jetmail worker` with no --nats-url
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	p, err := producer.New(js)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, _, err := p.Publish(ctx, &schema.Request{
		Id:      "welcome-jan-kowalski",
		To:      schema.AddressList{`"Jan Kowalski" <jan@example.com>`},
		Subject: "Witaj w sklepie!",
		Body:    "<p>Thanks for signing up.</p>",
		IsHtml:  true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published", id)

	actAsWorker(js, id) // a worker delivers it and publishes the results

	res, err := p.Wait(ctx, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.State, res.Status, res.Smtp.Message)
	// Output:
	// published welcome-jan-kowalski
	// sent 200 OK queued
}

// Publishing the same Id twice stores the request once: the second ack says
// it was a duplicate, so retrying a publish is always safe.
func ExampleProducer_Publish() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	ctx := context.Background()
	for range 2 {
		req := &schema.Request{
			Id:       "order-42-confirmation",
			To:       schema.AddressList{"jan@example.com"},
			Subject:  "Order 42 confirmed",
			Body:     "Thank you for your order.",
			Metadata: map[string]string{"order": "42"},
		}
		id, ack, err := p.Publish(ctx, req, producer.WithSubjectTokens("shop"))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: stream %s, sequence %d, duplicate %v\n", id, ack.Stream, ack.Sequence, ack.Duplicate)
	}
	// Output:
	// order-42-confirmation: stream JETMAIL_REQUESTS, sequence 1, duplicate false
	// order-42-confirmation: stream JETMAIL_REQUESTS, sequence 1, duplicate true
}

// A request that workers would reject is not published; the error lists
// every broken rule.
func ExampleProducer_Publish_invalid() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	_, _, err := p.Publish(context.Background(), &schema.Request{
		To:          schema.AddressList{"jan.example.com"},
		Attachments: []schema.Attachment{{ContentData: "aGVsbG8=", ContentTransferEncoding: "base64"}},
	})
	var ve *schema.ValidationError
	if errors.As(err, &ve) {
		for _, f := range ve.Fields {
			fmt.Println(f)
		}
	}
	// Output:
	// To[0]: not a valid email address: "jan.example.com"
	// Attachments[0].FileName: required
}

// Without the streams that workers create, publishing fails with an error
// that says what to do.
func ExampleProducer_Publish_noWorker() {
	url, stop := runJetStream(false) // JetStream, but no worker ever ran
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	_, _, err := p.Publish(context.Background(), &schema.Request{To: schema.AddressList{"jan@example.com"}})
	if errors.Is(err, producer.ErrNoStream) {
		fmt.Println(err)
	}
	// Output:
	// producer: no JetStream stream for mail.send: is a worker running?
}

// A payload written for the SMTP connector's Send Email action is published
// unchanged: keys in any case, recipients as one separated string.
func ExampleProducer_PublishJSON() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	payload := []byte(`{
		"id": "invoice-2026-0042",
		"to": "jan@example.com; \"Anna Nowak\" <anna@example.com>",
		"subject": "Faktura 2026/0042",
		"body": "<p>Your invoice is attached.</p>",
		"isHtml": "true",
		"attachments": [{"fileName": "faktura.txt", "contentData": "Razem: 100 zł"}]
	}`)
	id, ack, err := p.PublishJSON(context.Background(), payload)
	if err != nil {
		log.Fatal(err)
	}
	stored, _ := js.Stream(context.Background(), "JETMAIL_REQUESTS")
	msg, _ := stored.GetMsg(context.Background(), ack.Sequence)
	fmt.Println(id, msg.Header.Get("Nats-Msg-Id"), string(msg.Data) == string(payload))
	// Output:
	// invoice-2026-0042 invoice-2026-0042 true
}

// A batch publishes without waiting for each ack, then waits for all of
// them.
func ExampleProducer_PublishAsync() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	// At most 256 publishes wait for their ack at any time.
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(256))
	p, _ := producer.New(js)

	var futures []jetstream.PubAckFuture
	for i := range 1000 {
		_, f, err := p.PublishAsync(&schema.Request{
			Id:      fmt.Sprintf("newsletter-2026-05-%d", i),
			To:      schema.AddressList{fmt.Sprintf("reader%d@example.com", i)},
			Subject: "May news",
		})
		if err != nil {
			log.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures)%256 == 0 {
			<-js.PublishAsyncComplete() // let the window drain now and then
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		log.Fatal("acks missing")
	}
	stored := 0
	for _, f := range futures {
		select {
		case <-f.Ok():
			stored++
		case err := <-f.Err():
			fmt.Println(f.Msg().Header.Get("Nats-Msg-Id"), err)
		}
	}
	fmt.Println(stored, "stored")
	// Output:
	// 1000 stored
}

// Status tells where a message stands.
func ExampleProducer_Status() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	ctx := context.Background()
	_, err := p.Status(ctx, "order-42-confirmation")
	fmt.Println(errors.Is(err, producer.ErrNotFound), err)

	actAsWorker(js, "order-42-confirmation")
	res, err := p.Status(ctx, "order-42-confirmation")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.State, res.Status, res.MessageId)
	// Output:
	// true producer: no result for order-42-confirmation
	// sent 200 <order-42-confirmation@example.com>
}

// Results lists the result events stored so far, as `jetmail results` does.
func ExampleProducer_Results() {
	url, stop := runJetStream(true)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	p, _ := producer.New(js)

	actAsWorker(js, "welcome-1")
	actAsWorker(js, "welcome-2")

	for res, err := range p.Results(context.Background(), false) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(res.Id, res.State, res.Status)
	}
	// Output:
	// welcome-1 accepted 202
	// welcome-1 sent 200
	// welcome-2 accepted 202
	// welcome-2 sent 200
}

// Options change the names for a deployment whose workers run with
// --subject-prefix and their own stream names.
func ExampleNew() {
	url, stop := runJetStream(false)
	defer stop()
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)

	_, err := producer.New(js,
		producer.WithSubjectPrefix("acme.mail"),
		producer.WithResultStream("ACME_RESULTS"),
	)
	fmt.Println(errors.Is(err, producer.ErrInvalidOption), err)

	p, err := producer.New(js,
		producer.WithSubjectPrefix("acmemail"),
		producer.WithResultStream("ACME_RESULTS"),
		producer.WithIDFunc(func() string { return "acme-" + nuid.Next() }),
	)
	fmt.Println(p != nil, err)
	// Output:
	// true producer: invalid option: subject prefix "acme.mail" is not a single NATS token
	// true <nil>
}
