package webhook

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// maxAnswer is how much of an answer's body is read: enough for Test to
// show what went wrong, and to let the connection be reused.
const maxAnswer = 64 << 10

// post sends body to the webhook, signed for id at ts, and returns the
// answer's status and, when keep is set, up to maxAnswer bytes of its body.
// ctx bounds the whole exchange. An error means there was no answer; a
// failure to read the answer's body after its status is not an error.
func post(ctx context.Context, client *http.Client, c Config, id string, ts time.Time, body []byte, keep bool) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("webhook %s: %w", c.Name, withoutURL(err))
	}
	setHeaders(req.Header, c.Secret, id, ts, body)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	lr := io.LimitReader(resp.Body, maxAnswer)
	var answer []byte
	if keep {
		answer, _ = io.ReadAll(lr)
	} else {
		_, _ = io.Copy(io.Discard, lr)
	}
	return resp.StatusCode, answer, nil
}
