package deploy

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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
// the deployment relies on. They are the fallback when cmd/jetmail cannot be
// read, and cmd/jetmail must define every one of them.
//
// TODO(lead): cmd/jetmail is package main, which a test cannot import, so
// the flags are read from its source (go/ast, workerFlagsFromSource). If the
// command tree moves to an importable package (for example
// internal/cli.NewRootCmd), read them from the cobra command instead.
var contractFlags = []workerFlag{
	{Name: "nats-url", Kind: "String"},
	{Name: "smtp-url", Kind: "String"},
	{Name: "outbox", Kind: "String", Default: "./outbox"},
	{Name: "http-addr", Kind: "String", Default: ":8080"},
	{Name: "concurrency", Kind: "Int", Default: "16"},
	{Name: "retry-initial", Kind: "Duration"},
	{Name: "retry-multiplier", Kind: "Float64"},
	{Name: "retry-max-interval", Kind: "Duration"},
	{Name: "max-attempts", Kind: "Int"},
	{Name: "max-age", Kind: "Duration"},
	{Name: "grace-period", Kind: "Duration"},
	{Name: "subject-prefix", Kind: "String"},
	{Name: "replicas", Kind: "Int", Default: "1"},
	// Beyond §5.
	{Name: "smtp-password", Kind: "String"},
	{Name: "smtp-password-file", Kind: "String"},
	{Name: "smtp-ca-file", Kind: "String"},
	{Name: "smtp-from", Kind: "String"},
	{Name: "smtp-pool-size", Kind: "Int"},
	{Name: "smtp-allowed-senders", Kind: "StringSlice"},
	{Name: "log-level", Kind: "String"},
	{Name: "log-format", Kind: "String"},
	{Name: "data-dir", Kind: "String"},
	{Name: "embedded-addr", Kind: "String"},
}

// pflagDef matches the methods of pflag.FlagSet that define a flag:
// String, StringVar, StringVarP, StringP, DurationVar and so on.
var pflagDef = regexp.MustCompile(`^(String|StringSlice|StringArray|StringToString|Int|Int32|Int64|IntSlice|Uint|Uint32|Uint64|Bool|BoolSlice|Duration|DurationSlice|Float32|Float64|Count|IP|IPNet)(Var)?(P)?$`)

var (
	flagsOnce   sync.Once
	flagsByEnv  map[string]workerFlag
	flagsSource string
	flagsErr    string
)

// workerFlags returns the flags of `jetmail worker` by environment variable,
// read from cmd/jetmail's source, or contractFlags when that cannot be read.
func workerFlags(t reporter) map[string]workerFlag {
	t.Helper()
	flagsOnce.Do(func() {
		flags, err := workerFlagsFromSource(filepath.Join(root, "cmd", "jetmail"), "newWorkerCmd")
		if err != nil || len(flags) == 0 {
			flagsErr = "cannot read the worker flags from cmd/jetmail (" + errString(err) + "); using the list in flags_test.go"
			flags, flagsSource = contractFlags, "flags_test.go"
		} else {
			flagsSource = "cmd/jetmail"
		}
		flagsByEnv = map[string]workerFlag{}
		for _, f := range flags {
			flagsByEnv[f.Env()] = f
		}
	})
	if flagsErr != "" {
		t.Logf("%s", flagsErr)
	}
	return flagsByEnv
}

func errString(err error) string {
	if err == nil {
		return "no flags found"
	}
	return err.Error()
}

// workerFlagsFromSource finds the function fn in the Go package in dir and
// returns the flags it defines with pflag.FlagSet methods whose name is a
// string literal, following calls to other functions and methods of the
// package (helpers such as addSMTPFlags(fs)).
func workerFlagsFromSource(dir, fn string) ([]workerFlag, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	funcs := map[string][]*ast.FuncDecl{}   // package functions
	methods := map[string][]*ast.FuncDecl{} // methods, by name only
	// Names of imported packages: slog.String("k", v) is not a flag.
	pkgs := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			name := path.Base(p)
			if imp.Name != nil {
				name = imp.Name.Name
			} else if strings.HasPrefix(name, "v") && path.Dir(p) != "." {
				if _, err := strconv.Atoi(name[1:]); err == nil {
					name = path.Base(path.Dir(p)) // …/nats-server/v2
				}
			}
			pkgs[name] = true
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
				if fd.Recv == nil {
					funcs[fd.Name.Name] = append(funcs[fd.Name.Name], fd)
				} else {
					methods[fd.Name.Name] = append(methods[fd.Name.Name], fd)
				}
			}
		}
	}
	var flags []workerFlag
	seen := map[string]bool{}
	record := func(call *ast.CallExpr, m []string) {
		i := 0
		if m[2] == "Var" {
			i = 1 // StringVar(&p, name, …)
		}
		if len(call.Args) <= i+1 {
			return
		}
		lit, ok := call.Args[i].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return
		}
		flagName, err := strconv.Unquote(lit.Value)
		if err != nil || seen[flagName] {
			return
		}
		seen[flagName] = true
		def := ""
		di := i + 1
		if m[3] == "P" {
			di++ // the shorthand comes before the default
		}
		if di < len(call.Args) {
			if dl, ok := call.Args[di].(*ast.BasicLit); ok {
				if s, err := strconv.Unquote(dl.Value); err == nil {
					def = s
				} else {
					def = dl.Value
				}
			}
		}
		flags = append(flags, workerFlag{Name: flagName, Kind: m[1], Default: def})
	}
	visited := map[*ast.FuncDecl]bool{}
	var visit func(fd *ast.FuncDecl)
	visit = func(fd *ast.FuncDecl) {
		if visited[fd] {
			return
		}
		visited[fd] = true
		// The flag sets in scope: parameters of type *pflag.FlagSet and
		// variables assigned from cmd.Flags() and the like.
		sets := map[string]bool{}
		for _, p := range fd.Type.Params.List {
			if isFlagSetType(p.Type) {
				for _, n := range p.Names {
					sets[n.Name] = true
				}
			}
		}
		isSet := func(e ast.Expr) bool {
			switch x := e.(type) {
			case *ast.Ident:
				return sets[x.Name]
			case *ast.CallExpr:
				if sel, ok := x.Fun.(*ast.SelectorExpr); ok {
					switch sel.Sel.Name {
					case "Flags", "PersistentFlags", "LocalFlags":
						return true
					}
				}
			}
			return false
		}
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncLit:
				// Closures such as RunE run after the flags are parsed:
				// they define none, and what they call is not followed.
				return false
			case *ast.AssignStmt:
				for i, rhs := range n.Rhs {
					if id, ok := n.Lhs[min(i, len(n.Lhs)-1)].(*ast.Ident); ok && isSet(rhs) {
						sets[id.Name] = true
					}
				}
			case *ast.CallExpr:
				sel, isSel := n.Fun.(*ast.SelectorExpr)
				if isSel && isSet(sel.X) {
					if m := pflagDef.FindStringSubmatch(sel.Sel.Name); m != nil {
						record(n, m)
					}
					return true
				}
				// Follow the package's functions (such as a workerCommand
				// that newWorkerCmd wraps), and methods that are given a
				// flag set (such as f.addFlags(fs)); methods are known by
				// name only, so following every one could wander into
				// another command's flags.
				passes := false
				for _, a := range n.Args {
					passes = passes || isSet(a)
				}
				var callees []*ast.FuncDecl
				switch f := n.Fun.(type) {
				case *ast.Ident:
					callees = funcs[f.Name]
				case *ast.SelectorExpr:
					if id, ok := f.X.(*ast.Ident); ok && pkgs[id.Name] {
						return true // a function of another package
					}
					if passes {
						callees = methods[f.Sel.Name]
					}
				}
				for _, callee := range callees {
					visit(callee)
				}
			}
			return true
		})
	}
	decls, ok := funcs[fn]
	if !ok || len(decls) == 0 {
		return nil, os.ErrNotExist
	}
	for _, fd := range decls {
		visit(fd)
	}
	return flags, nil
}

// isFlagSetType reports whether a parameter type is *pflag.FlagSet.
func isFlagSetType(e ast.Expr) bool {
	star, ok := e.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "FlagSet"
}

// TestWorkerFlags checks that the flags the deployment files rely on exist
// (and so that reading them from cmd/jetmail works).
func TestWorkerFlags(t *testing.T) {
	flags := workerFlags(t)
	if flagsSource != "cmd/jetmail" {
		t.Skip("cmd/jetmail not readable; the deployment tests use the built-in list")
	}
	for _, want := range contractFlags {
		got, ok := flags[want.Env()]
		if !ok {
			t.Errorf("jetmail worker has no flag --%s (%s), which CONTRACT §5 or the deployment needs", want.Name, want.Env())
			continue
		}
		if got.Kind != want.Kind {
			t.Errorf("--%s is a %s flag in cmd/jetmail, the deployment expects %s", want.Name, got.Kind, want.Kind)
		}
		if want.Default != "" && got.Default != "" && got.Default != want.Default {
			t.Errorf("--%s defaults to %q in cmd/jetmail, CONTRACT §5 says %q", want.Name, got.Default, want.Default)
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
			t.Errorf("%s: %s is not the variable of any `jetmail worker` flag (flags from %s)", where, k, flagsSource)
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

// TestFlagsFromSource checks the reader of flag definitions on a small
// command tree: helpers are followed, closures and other commands are not.
func TestFlagsFromSource(t *testing.T) {
	dir := t.TempDir()
	src := `package main

import (
	"log/slog"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type wf struct{ a string; b int; d time.Duration }
type sf struct{ to string }

func newWorkerCmd() *cobra.Command { return workerCommand() }

func workerCommand() *cobra.Command {
	f := &wf{}
	cmd := &cobra.Command{RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd.Flags()) }}
	fs := cmd.Flags()
	fs.StringVar(&f.a, "nats-url", "", "x")
	cmd.Flags().IntVarP(&f.b, "replicas", "r", 1, "x")
	f.addMore(fs)
	slog.String("not-a-flag", "x")
	return cmd
}

func (f *wf) addMore(fs *pflag.FlagSet) { fs.DurationVar(&f.d, "grace-period", time.Second, "x") }

func (f *wf) run(fs *pflag.FlagSet) error { fs.String("late", "", "x"); return nil }

func run() { newSendCmd() }

func newSendCmd() *cobra.Command {
	s := &sf{}
	cmd := &cobra.Command{}
	cmd.Flags().StringVar(&s.to, "to", "", "x")
	return cmd
}
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	flags, err := workerFlagsFromSource(dir, "newWorkerCmd")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range flags {
		got[f.Name] = f.Kind + "=" + f.Default
	}
	want := map[string]string{"nats-url": "String=", "replicas": "Int=1", "grace-period": "Duration="}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("flags read from source: %v, want %v", got, want)
	}
	if _, err := workerFlagsFromSource(dir, "newMissingCmd"); err == nil {
		t.Error("a missing function gave no error")
	}
}
