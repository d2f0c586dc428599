package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlLine matches the "line N: " that yaml.v3 starts its messages with.
var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// YAMLError turns a yaml.v3 error about the file at path into one
// "PATH:LINE: message" error per problem (PATH alone when yaml.v3 names
// no line), each message passed through explain, which rewrites yaml.v3's
// Go type names into words a user of the file knows. The connections file
// and the webhooks file report their errors through it.
func YAMLError(path string, err error, explain func(msg string) string) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs []error
	for _, m := range msgs {
		loc := path
		if sm := yamlLine.FindStringSubmatch(m); sm != nil {
			loc += ":" + sm[1]
			m = m[len(sm[0]):]
		} else {
			m = strings.TrimPrefix(m, "yaml: ")
		}
		errs = append(errs, fmt.Errorf("%s: %s", loc, explain(m)))
	}
	return errors.Join(errs...)
}
