package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// An instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Cmd  string // upper case: FROM, RUN …
	Args string
	Line int
}

// A stage is one FROM and the instructions after it.
type stage struct {
	Image, Name string
	Ins         []instruction
}

// parseDockerfile splits a Dockerfile into stages (comments dropped,
// backslash continuations joined).
func parseDockerfile(text string) []stage {
	var stages []stage
	var cur strings.Builder
	start := 0
	flush := func() {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			st := stage{}
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					st.Name = f[i+1]
					i++
				case st.Image == "":
					st.Image = f[i]
				}
			}
			stages = append(stages, st)
			return
		}
		if len(stages) > 0 {
			stages[len(stages)-1].Ins = append(stages[len(stages)-1].Ins, in)
		}
	}
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

// last returns the last instruction cmd of a stage ("" if none).
func (s stage) last(cmd string) string {
	v := ""
	for _, in := range s.Ins {
		if in.Cmd == cmd {
			v = in.Args
		}
	}
	return v
}

// goBuildOutput matches the -o of a go build.
var goBuildOutput = regexp.MustCompile(`go build\b.*\s-o\s+(\S+)`)

// checkDockerfile checks the image recipe the issue asks for: a golang
// builder of the go.mod's Go version that builds a static ./cmd/jetmail, a
// distroless or scratch final stage running that binary as a non-root user,
// the worker's HTTP port exposed, ENTRYPOINT ["/jetmail"], CMD ["worker"].
func checkDockerfile(t reporter, text, goVersion string, httpPort int) {
	t.Helper()
	stages := parseDockerfile(text)
	if len(stages) < 2 {
		t.Errorf("Dockerfile: %d stages, want a build stage and a final stage", len(stages))
		return
	}
	build, final := stages[0], stages[len(stages)-1]
	if !strings.HasPrefix(build.Image, "golang:"+goVersion) {
		t.Errorf("Dockerfile: the build stage is %s, want golang:%s (the go.mod's Go)", build.Image, goVersion)
	}
	var binary string
	for _, in := range build.Ins {
		if in.Cmd != "RUN" || !strings.Contains(in.Args, "go build") {
			continue
		}
		if !strings.Contains(in.Args, "CGO_ENABLED=0") {
			t.Errorf("Dockerfile line %d: go build without CGO_ENABLED=0; the binary would need libc, which distroless/static lacks", in.Line)
		}
		if !regexp.MustCompile(`\s\./cmd/jetmail(\s|$)`).MatchString(in.Args + " ") {
			t.Errorf("Dockerfile line %d: go build does not build ./cmd/jetmail", in.Line)
		}
		if m := goBuildOutput.FindStringSubmatch(in.Args); m != nil {
			binary = m[1]
		}
	}
	if binary == "" {
		t.Errorf("Dockerfile: the build stage has no `go build ... -o FILE ./cmd/jetmail`")
	}
	if !strings.HasPrefix(final.Image, "gcr.io/distroless/static") && final.Image != "scratch" {
		t.Errorf("Dockerfile: the final image is %s, want gcr.io/distroless/static…:nonroot or scratch", final.Image)
	}
	copied := ""
	for _, in := range final.Ins {
		if in.Cmd != "COPY" || !strings.Contains(in.Args, "--from=") {
			continue
		}
		f := strings.Fields(in.Args)
		from := ""
		var paths []string
		for _, a := range f {
			if v, ok := strings.CutPrefix(a, "--from="); ok {
				from = v
			} else if !strings.HasPrefix(a, "--") {
				paths = append(paths, a)
			}
		}
		if (from == build.Name || from == "0") && len(paths) == 2 && paths[0] == binary {
			copied = paths[1]
		}
	}
	var entry, cmd []string
	if err := json.Unmarshal([]byte(final.last("ENTRYPOINT")), &entry); err != nil || len(entry) != 1 || entry[0] != "/jetmail" {
		t.Errorf(`Dockerfile: ENTRYPOINT %s, want ["/jetmail"] (exec form)`, final.last("ENTRYPOINT"))
	}
	if err := json.Unmarshal([]byte(final.last("CMD")), &cmd); err != nil || len(cmd) != 1 || cmd[0] != "worker" {
		t.Errorf(`Dockerfile: CMD %s, want ["worker"] (exec form)`, final.last("CMD"))
	}
	if copied != "/jetmail" {
		t.Errorf("Dockerfile: the final stage does not COPY --from=%s %s /jetmail", build.Name, binary)
	}
	user := final.last("USER")
	uid, _, _ := strings.Cut(user, ":")
	switch {
	case user == "":
		if !strings.HasSuffix(final.Image, ":nonroot") {
			t.Errorf("Dockerfile: the final stage has no USER and its image is not a :nonroot one: it runs as root")
		}
	case uid == "root" || uid == "0":
		t.Errorf("Dockerfile: USER %s is root", user)
	case final.Image == "scratch":
		if _, err := strconv.Atoi(uid); err != nil {
			t.Errorf("Dockerfile: USER %s on scratch must be numeric (there is no /etc/passwd)", user)
		}
	}
	exposed := false
	for _, p := range strings.Fields(final.last("EXPOSE")) {
		exposed = exposed || strings.TrimSuffix(p, "/tcp") == strconv.Itoa(httpPort)
	}
	if !exposed {
		t.Errorf("Dockerfile: does not EXPOSE the worker's HTTP port %d", httpPort)
	}
}

// goModVersion returns the major.minor of go.mod's go directive.
func goModVersion(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod: no go directive")
	}
	return string(m[1])
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(rootPath(dockerfile))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	goVersion := goModVersion(t)
	// The port the image exposes is the worker's default --http-addr and
	// the one the compose file sets.
	httpPort := 8080
	if f, ok := workerFlags(t)["JETMAIL_HTTP_ADDR"]; ok && f.Default != "" {
		httpPort = portOfAddr(t, f.Default)
	}
	if p := portOfAddr(t, serviceEnv(loadCompose(t).service(t, "jetmail"))["JETMAIL_HTTP_ADDR"]); p != httpPort {
		t.Errorf("the compose worker listens on %d, the image exposes the default %d", p, httpPort)
	}
	checkDockerfile(t, text, goVersion, httpPort)

	// The Kubernetes pod runs as the image's user.
	final := parseDockerfile(text)
	user, _, _ := strings.Cut(final[len(final)-1].last("USER"), ":")
	k := loadKube(t)
	podUser := getString(k.workerDeployment(t), "spec", "template", "spec", "securityContext", "runAsUser")
	if c := getString(k.workerContainer(t), "securityContext", "runAsUser"); c != "" {
		podUser = c
	}
	if _, err := strconv.Atoi(user); err == nil && podUser != "" && podUser != user {
		t.Errorf("the worker pod runs as user %s, the image as %s", podUser, user)
	}

	// The build context keeps what the build needs.
	if ig, err := os.ReadFile(rootPath(dockerignore)); err == nil {
		for _, line := range strings.Split(string(ig), "\n") {
			pat := strings.TrimPrefix(strings.TrimSpace(line), "/")
			if pat == "" || strings.HasPrefix(pat, "#") || strings.HasPrefix(pat, "!") {
				continue
			}
			for _, need := range []string{"go.mod", "go.sum", "cmd", "cmd/jetmail", "worker", "schema", "producer", "config", "httpapi", "internal", "internal/cli"} {
				if ok, _ := filepath.Match(pat, need); ok {
					t.Errorf("%s: %q excludes %s, which the build needs", dockerignore, line, need)
				}
			}
		}
	}

	// The checks can fail.
	for _, tc := range []struct{ name, from, to, want string }{
		{"root user", "USER 65532:65532", "USER root", "root"},
		{"cgo", "CGO_ENABLED=0 ", "", "CGO_ENABLED=0"},
		{"other package", "./cmd/jetmail", "./cmd/other", "./cmd/jetmail"},
		{"shell-form entrypoint", `ENTRYPOINT ["/jetmail"]`, "ENTRYPOINT /jetmail", "ENTRYPOINT"},
		{"no CMD worker", `CMD ["worker"]`, `CMD ["send"]`, "CMD"},
		{"wrong port", "EXPOSE 8080", "EXPOSE 9090", "EXPOSE"},
		{"old Go", "golang:" + goVersion, "golang:1.21", "golang:"},
		{"alpine final", "gcr.io/distroless/static-debian12:nonroot", "alpine:3.20", "final image"},
	} {
		broken := strings.Replace(text, tc.from, tc.to, 1)
		if broken == text {
			t.Errorf("%s: the Dockerfile no longer contains %q; update this test", tc.name, tc.from)
			continue
		}
		mustFail(t, tc.name, tc.want, func(r reporter) { checkDockerfile(r, broken, goVersion, httpPort) })
	}
}
