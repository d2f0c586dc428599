package schema_test

import (
	"errors"
	"fmt"

	"github.com/jetmail/jetmail/schema"
)

// A payload written for the SMTP connector's Send Email action decodes
// unchanged: keys in any case, recipients in one separated string, IsHtml as
// a string.
func ExampleDecode() {
	payload := []byte(`{
		"to": "\"Kowalski, Jan\" <jan.kowalski@example.com>; anna.nowak@example.com",
		"SUBJECT": "Zażółć gęślą jaźń",
		"Body": "<p>Your order has shipped.</p>",
		"IsHtml": "true",
		"Importance": "high",
		"CC": null
	}`)
	r, err := schema.Decode(payload)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := r.Validate(); err != nil {
		fmt.Println(err)
		return
	}
	for _, to := range r.To {
		fmt.Println("To:", to)
	}
	fmt.Println("Subject:", r.Subject)
	fmt.Println("IsHtml:", r.IsHtml)
	fmt.Println("Importance:", r.Importance)
	// Output:
	// To: "Kowalski, Jan" <jan.kowalski@example.com>
	// To: anna.nowak@example.com
	// Subject: Zażółć gęślą jaźń
	// IsHtml: true
	// Importance: High
}

// Validate reports every broken rule at once, each with the path of its
// field; a worker publishes them as the Fields of a 400 result.
func ExampleValidationError() {
	r, err := schema.Decode([]byte(`{
		"To": "jan.kowalski.example.com",
		"Subject": "Hello\r\nBcc: victim@example.org",
		"Headers": {"Content-Type": "text/html"},
		"Attachments": [
			{"FileName": "a.txt", "ContentData": "aGVsbG8="},
			{"FileName": "b.pdf", "ContentData": "JVBERi0%", "ContentTransferEncoding": "base64"}
		]
	}`))
	if err == nil {
		err = r.Validate()
	}
	var ve *schema.ValidationError
	if errors.As(err, &ve) {
		for _, f := range ve.Fields {
			fmt.Println(f)
		}
	}
	// Output:
	// To[0]: not a valid email address: "jan.kowalski.example.com"
	// Subject: must not contain CR or LF
	// Headers["Content-Type"]: a structural header can not be set through Headers
	// Attachments[1].ContentData: not valid base64
}

func ExampleSplitAddresses() {
	for _, a := range schema.SplitAddresses(`"Kowalski, Jan" <jan@example.com>; anna@example.com, bartek@example.org`) {
		fmt.Println(a)
	}
	// Output:
	// "Kowalski, Jan" <jan@example.com>
	// anna@example.com
	// bartek@example.org
}
