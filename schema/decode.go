package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Decode parses a request payload. Keys are matched case-insensitively and
// unknown keys are ignored, so connector payloads decode unchanged. A payload
// that is not a JSON object, or whose values have the wrong types, yields a
// *ValidationError naming every offending field.
//
// Decode does not check the rules of the contract; call Validate for that.
func Decode(data []byte) (*Request, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		msg := "not valid JSON"
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			msg = fmt.Sprintf("not valid JSON: %v (at byte %d)", se, se.Offset)
		case errors.As(err, &te):
			msg = "want a JSON object, got " + te.Value
		}
		return nil, &ValidationError{Fields: []FieldError{{Field: "", Message: msg}}}
	}
	var r Request
	var errs []FieldError
	decodeObject(raw, "", map[string]any{
		"to": &r.To, "cc": &r.CC, "bcc": &r.Bcc, "from": &r.From,
		"subject": &r.Subject, "body": &r.Body, "ishtml": &r.IsHtml,
		"importance": &r.Importance, "id": &r.Id, "replyto": &r.ReplyTo,
		"textbody": &r.TextBody, "headers": &r.Headers,
		"connection": &r.Connection, "metadata": &r.Metadata,
	}, &errs)
	if v, ok := lookupFold(raw, "attachments"); ok && !isNull(v) {
		var items []json.RawMessage
		if err := json.Unmarshal(v, &items); err != nil {
			errs = append(errs, FieldError{Field: "Attachments", Message: "want an array of objects"})
		}
		for i, item := range items {
			path := fmt.Sprintf("Attachments[%d]", i)
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(item, &obj); err != nil || obj == nil {
				errs = append(errs, FieldError{Field: path, Message: "want an object"})
				continue
			}
			var a Attachment
			decodeObject(obj, path+".", map[string]any{
				"contentdata": &a.ContentData, "contenttype": &a.ContentType,
				"contenttransferencoding": &a.ContentTransferEncoding,
				"filename":                &a.FileName, "contentid": &a.ContentId,
			}, &errs)
			r.Attachments = append(r.Attachments, a)
		}
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b FieldError) int { return strings.Compare(a.Field, b.Field) })
		return nil, &ValidationError{Fields: errs}
	}
	return &r, nil
}

// fieldNames maps the lower-case keys that decodeObject matches to the
// contract's spelling, for error messages.
var fieldNames = map[string]string{
	"to": "To", "cc": "CC", "bcc": "Bcc", "from": "From", "subject": "Subject",
	"body": "Body", "ishtml": "IsHtml", "importance": "Importance", "id": "Id",
	"replyto": "ReplyTo", "textbody": "TextBody", "headers": "Headers",
	"connection": "Connection", "metadata": "Metadata",
	"contentdata": "ContentData", "contenttype": "ContentType",
	"contenttransferencoding": "ContentTransferEncoding",
	"filename":                "FileName", "contentid": "ContentId",
}

// decodeObject unmarshals each known key of obj (matched without regard to
// case) into its target, recording a FieldError per value of the wrong type.
// JSON null leaves a target at its zero value.
func decodeObject(obj map[string]json.RawMessage, prefix string, targets map[string]any, errs *[]FieldError) {
	for key, target := range targets {
		v, ok := lookupFold(obj, key)
		if !ok || isNull(v) {
			continue
		}
		if err := json.Unmarshal(v, target); err != nil {
			*errs = append(*errs, FieldError{Field: prefix + fieldNames[key], Message: typeMessage(err)})
		}
	}
}

// lookupFold finds key in obj without regard to case. When an object holds
// the same key in several spellings, the exact lower-case one wins, then any.
func lookupFold(obj map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	if v, ok := obj[key]; ok {
		return v, true
	}
	for k, v := range obj {
		if strings.EqualFold(k, key) {
			return v, true
		}
	}
	return nil, false
}

func isNull(v json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(v), []byte("null")) }

// typeMessage turns a json error for a single value into a short message.
func typeMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := te.Type.Kind().String()
		switch want {
		case "map":
			want = "an object of strings"
		case "string":
			want = "a string"
		}
		return fmt.Sprintf("want %s, got %s", want, te.Value)
	}
	return err.Error()
}
