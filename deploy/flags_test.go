package deploy

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetmail/jetmail/internal/cli"
	"github.com/spf13/pflag"
)

// A workerFlag is one flag of `jetmail worker`.
type workerFlag struct {
	Name string // "nats-url"
	Kind string // the pflag type: String, Int, Bool, Duration, Float64, StringSlice, StringArray …
	// Default is the default value when it is a literal in the source
	// ("" otherwise).
	Default string
}

// Env is the flag's environment variable: JETMAIL_ + the name in upper
// case with '_' for '-' (CONTRACT §5).
func (f workerFlag) Env() string {
	return "JETMAIL_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
}

// contractFlags are the `jetmail worker` flags of CONTRACT §5 and the extras
// the deployment relies on; jetmail worker must define every one of them,
// of this kind and (where given) with this default.
var contractFlags = []workerFlag{
	{Name: "nats-url", Kind: "String"},
	{Name: "smtp-url", Kind: "String"},
	{Name: "outbox", Kind: "String", Default: "./outbox"},
	{Name: "http-addr", Kind: "String", Default: ":8080"},
	{Name: "concurrency", Kind: "Int", Default: "64"}, // contract §5 says 16; issue 14 raised it
	{Name: "retry-initial", Kind: "Duration", Default: "30s"},
	{Name: "retry-multiplier", Kind: "Float64", Default: "2"},
	{Name: "retry-max-interval", Kind: "Duration", Default: "30m0s"},
	{Name: "max-attempts", Kind: "Int", Default: "12"},
	{Name: "max-age", Kind: "Duration", Default: "48h0m0s"},
	{Name: "grace-period", Kind: "Duration", Default: "30s"},
	{Name: "subject-prefix", Kind: "String", Default: "mail"},
	{Name: "replicas", Kind: "Int", Default: "1"},
	// Beyond §5.
	{Name: "smtp-password", Kind: "String"},
	{Name: "smtp-password-file", Kind: "String"},
	{Name: "smtp-ca-file", Kind: "String"},
	{Name: "smtp-from", Kind: "String"},
	{Name: "smtp-pool-size", Kind: "Int", Default: "4"},
	{Name: "smtp-allowed-senders", Kind: "StringSlice"},
	{Name: "log-level", Kind: "String", Default: "info"},
	{Name: "log-format", Kind: "String", Default: "text"},
	{Name: "data-dir", Kind: "String", Default: "./jetmail-data"},
	{Name: "embedded-addr", Kind: "String", Default: "127.0.0.1:4222"},
}

var (
	flagsOnce  sync.Once
	flagsByEnv map[string]workerFlag
)

// workerFlags returns the flags of `jetmail worker` by environment variable,
// read from the command's real flag set (internal/cli).
func workerFlags(t reporter) map[string]workerFlag {
	t.Helper()
	flagsOnce.Do(func() {
		flagsByEnv = map[string]workerFlag{}
		cli.WorkerFlags().VisitAll(func(f *pflag.Flag) {
			wf := workerFlag{Name: f.Name, Kind: kindOf(f.Value.Type()), Default: f.DefValue}
			if wf.Default == "[]" {
				wf.Default = ""
			}
			flagsByEnv[wf.Env()] = wf
		})
	})
	return flagsByEnv
}

// kindOf turns pflag's value type ("string", "stringSlice", "float64") into
// the name of its FlagSet method ("String", "StringSlice", "Float64").
func kindOf(typ string) string {
	if typ == "" {
		return ""
	}
	return strings.ToUpper(typ[:1]) + typ[1:]
}

// TestWorkerFlags checks that the flags the deployment files rely on exist,
// of the kind and with the default the contract and the files assume.
func TestWorkerFlags(t *testing.T) {
	flags := workerFlags(t)
	for _, want := range contractFlags {
		got, ok := flags[want.Env()]
		if !ok {
			t.Errorf("jetmail worker has no flag --%s (%s), which CONTRACT §5 or the deployment needs", want.Name, want.Env())
			continue
		}
		if got.Kind != want.Kind {
			t.Errorf("--%s is a %s flag, the deployment expects %s", want.Name, got.Kind, want.Kind)
		}
		if want.Default != "" && got.Default != want.Default {
			t.Errorf("--%s defaults to %q, CONTRACT §5 or the deployment says %q", want.Name, got.Default, want.Default)
		}
	}
}

// checkWorkerEnv checks environment variables given to a `jetmail worker`:
// each JETMAIL_* one must be a flag's variable and hold a value of the
// flag's type; secret material must not be given as plain text.
func checkWorkerEnv(t reporter, where string, env map[string]string) {
	t.Helper()
	flags := workerFlags(t)
	for _, k := range sortedKeys(env) {
		v := env[k]
		if !strings.HasPrefix(k, "JETMAIL_") {
			continue
		}
		f, ok := flags[k]
		if !ok {
			t.Errorf("%s: %s is not the variable of any `jetmail worker` flag", where, k)
			continue
		}
		if err := checkFlagValue(f.Kind, v); err != nil {
			t.Errorf("%s: %s=%q is not a valid --%s: %v", where, k, v, f.Name, err)
		}
	}
	if _, ok := env["JETMAIL_SMTP_PASSWORD"]; ok {
		t.Errorf("%s: sets JETMAIL_SMTP_PASSWORD in plain text; mount the password as a file and set JETMAIL_SMTP_PASSWORD_FILE", where)
	}
}

// checkFlagValue reports whether v parses as a value of a pflag kind.
func checkFlagValue(kind, v string) error {
	var err error
	switch kind {
	case "Int", "Int32", "Int64", "Count":
		_, err = strconv.ParseInt(v, 0, 64)
	case "Uint", "Uint32", "Uint64":
		_, err = strconv.ParseUint(v, 0, 64)
	case "Float32", "Float64":
		_, err = strconv.ParseFloat(v, 64)
	case "Bool":
		_, err = strconv.ParseBool(v)
	case "Duration":
		_, err = time.ParseDuration(v)
	}
	return err
}

// TestCheckWorkerEnvCatches makes sure the environment check can fail.
func TestCheckWorkerEnvCatches(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"unknown flag", map[string]string{"JETMAIL_NATS_ULR": "nats://x:4222"}},
		{"bad duration", map[string]string{"JETMAIL_GRACE_PERIOD": "30"}},
		{"bad int", map[string]string{"JETMAIL_REPLICAS": "three"}},
		{"plain password", map[string]string{"JETMAIL_SMTP_PASSWORD": "secret"}},
	} {
		r := &recorder{}
		checkWorkerEnv(r, tc.name, tc.env)
		if len(r.errs) == 0 {
			t.Errorf("%s: %v passed the environment check", tc.name, tc.env)
		}
	}
	r := &recorder{}
	checkWorkerEnv(r, "good", map[string]string{"JETMAIL_GRACE_PERIOD": "30s", "JETMAIL_REPLICAS": "3", "GOMEMLIMIT": "1"})
	if len(r.errs) > 0 {
		t.Errorf("a good environment failed the check: %v", r.errs)
	}
}
