package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envPrefix starts the name of every flag's environment variable.
const envPrefix = "JETMAIL_"

// envAnnotation marks a flag whose value came from its environment
// variable rather than the command line.
const envAnnotation = "jetmail_from_env"

// envName is the environment variable of a flag: JETMAIL_ and the flag's
// name in upper case with '_' for '-', such as JETMAIL_NATS_URL for
// --nats-url.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// noEnv lists the flags that have no environment variable: --all (of
// dead replay) acts on everything, so it must be asked for on the command
// line.
func noEnv(name string) bool { return name == "help" || name == "version" || name == "all" }

// applyEnv sets every flag of fs that was not given on the command line
// from its environment variable, when that is set (even to ""), using
// lookup to read the environment. So the command line wins over the
// environment, which wins over the default. A variable holding a value
// the flag rejects is an error naming both. A repeatable flag takes the
// variable's value as one occurrence. applyEnv returns the names of the
// flags it set and marks them (see fromEnv).
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) ([]string, error) {
	var set []string
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || noEnv(f.Name) {
			return
		}
		v, ok := lookup(envName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s: not a valid value for --%s: %w", envName(f.Name), f.Name, err))
			return
		}
		if f.Annotations == nil {
			f.Annotations = map[string][]string{}
		}
		f.Annotations[envAnnotation] = []string{"true"}
		set = append(set, f.Name)
	})
	return set, errors.Join(errs...)
}

// fromEnv reports whether applyEnv set f from the environment.
func fromEnv(f *pflag.Flag) bool {
	return f != nil && len(f.Annotations[envAnnotation]) > 0
}

// annotateEnv appends each flag's environment variable to its help text,
// as in "NATS server URL [$JETMAIL_NATS_URL]", for cmd and every command
// below it.
func annotateEnv(cmd *cobra.Command) {
	note := func(f *pflag.Flag) {
		if noEnv(f.Name) {
			return
		}
		suffix := " [$" + envName(f.Name) + "]"
		if !strings.HasSuffix(f.Usage, suffix) {
			f.Usage += suffix
		}
	}
	cmd.Flags().VisitAll(note)
	cmd.PersistentFlags().VisitAll(note)
	for _, c := range cmd.Commands() {
		annotateEnv(c)
	}
}
