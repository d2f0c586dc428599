package jstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Binaries built for the process tests, once per test binary.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// NATSServerBinary builds the nats-server of go.mod (its module root is a
// main package) once per test binary and returns its path. The test fails
// when it cannot be built. Call RemoveBinaries from TestMain to delete it.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "jetmail-nats-server-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "nats-server")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/nats-io/nats-server/v2").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build nats-server: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// RemoveBinaries deletes what NATSServerBinary built; TestMain calls it
// after the tests.
func RemoveBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// ProcOptions are the settings of a nats-server process.
type ProcOptions struct {
	// Host is the address the server listens on and clients dial.
	// Default 127.0.0.1.
	Host string
	// Wrap is put before the command, such as "ip netns exec NS" to run
	// the server in a network namespace; it must exec the server (so that
	// signals reach it).
	Wrap []string
	// Args are more arguments for nats-server.
	Args []string
}

// Proc is a nats-server running as a process of its own, with JetStream
// and its store in a folder that outlives the process: the thing that a
// SIGKILL, a SIGSTOP or a network partition can really be done to. It is
// killed at cleanup. Its methods are safe for concurrent use.
type Proc struct {
	t    testing.TB
	bin  string
	opts ProcOptions
	port int
	dir  string
	logs string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	runs int
}

// StartProc starts a nats-server process with JetStream (-js) on a free
// port of opts.Host, its store in t.TempDir(), and waits until JetStream
// answers.
func StartProc(t testing.TB, opts ProcOptions) *Proc {
	t.Helper()
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	p := &Proc{t: t, bin: NATSServerBinary(t), opts: opts, dir: t.TempDir(), logs: t.TempDir()}
	if opts.Host == "127.0.0.1" {
		p.port = freePorts(t, 1)[0]
	} else {
		p.port = 4222 // alone in its namespace
	}
	// After the TempDirs, so that it runs before they are removed.
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			for i := 1; i <= p.runs; i++ {
				if b, err := os.ReadFile(p.logFile(i)); err == nil {
					t.Logf("nats-server log, run %d:\n%s", i, b)
				}
			}
		}
	})
	p.Start()
	return p
}

func (p *Proc) logFile(run int) string { return filepath.Join(p.logs, fmt.Sprintf("run%d.log", run)) }

// URL is the server's client URL; it stays the same across restarts.
func (p *Proc) URL() string { return "nats://" + p.opts.Host + ":" + strconv.Itoa(p.port) }

// StoreDir is the folder of the server's streams.
func (p *Proc) StoreDir() string { return p.dir }

// Start starts the server (again, after Kill) on the same port and store,
// and waits up to 30 s until JetStream answers.
func (p *Proc) Start() {
	p.t.Helper()
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return
	}
	p.runs++
	args := append([]string{}, p.opts.Wrap...)
	args = append(args, p.bin, "-js", "-sd", p.dir, "-a", p.opts.Host, "-p", strconv.Itoa(p.port),
		"-n", "jetmail-test", "-l", p.logFile(p.runs))
	args = append(args, p.opts.Args...)
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		p.t.Fatalf("start nats-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	p.waitJetStream(30 * time.Second)
}

// waitJetStream waits until the server answers a JetStream request.
func (p *Proc) waitJetStream(d time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(d)
	for {
		if err := p.ping(); err == nil {
			return
		} else if time.Now().After(deadline) {
			p.t.Fatalf("nats-server on %s: JetStream does not answer after %s: %v", p.URL(), d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *Proc) ping() error {
	nc, err := nats.Connect(p.URL(), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// Kill sends SIGKILL and waits until the process is gone: no shutdown, no
// flush, what was in flight is lost as in a crash. Calling it when the
// server is not running is harmless.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd, p.done = nil, nil
}

// Freeze stops the process with SIGSTOP: its sockets stay open and the
// kernel keeps accepting bytes for it, but nothing answers.
func (p *Proc) Freeze() { p.signal(syscall.SIGSTOP) }

// Thaw lets a frozen process go on (SIGCONT).
func (p *Proc) Thaw() { p.signal(syscall.SIGCONT) }

func (p *Proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		p.t.Fatalf("nats-server is not running")
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Running reports whether the process runs (frozen or not).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}
