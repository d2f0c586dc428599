package webhook_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/jetmail/jetmail/webhook"
)

// A receiver checks each request with Verify before it trusts the body,
// and answers 2xx once it has the event.
func ExampleVerify() {
	secret, _ := webhook.ParseSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		if err := webhook.Verify(secret, r.Header, body, time.Now(), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		// Deduplicate on r.Header.Get("webhook-id"), then handle body.
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()

	hook := webhook.Config{Name: "crm", URL: receiver.URL, Secret: secret}
	status, _, err := webhook.Test(context.Background(), hook, nil)
	fmt.Println(status, err)

	hook.Secret = []byte("another key, twenty-four bytes or more")
	status, answer, _ := webhook.Test(context.Background(), hook, nil)
	fmt.Printf("%d %s", status, answer)
	// Output:
	// 204 <nil>
	// 401 webhook: no matching signature
}
