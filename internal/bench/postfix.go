package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Postfix, when installed: smtp-sink as the sink (--sink postfix),
// smtp-source as the SMTP limit, and a throwaway relay as the reference
// for durability always.

// findPostfixTool finds one of Postfix's programs in PATH, /usr/sbin or
// /usr/local/sbin.
func findPostfixTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("Postfix's %s is not in PATH, /usr/sbin or /usr/local/sbin (apt-get install postfix brings it)", name)
}

// findSMTPSink finds Postfix's smtp-sink.
func findSMTPSink() (string, error) {
	p, err := findPostfixTool("smtp-sink")
	if err != nil {
		return "", fmt.Errorf("--sink postfix: %w", err)
	}
	return p, nil
}

// postfixSink is Postfix's smtp-sink in a child process; its -c counter
// (sess=… quit=… mesg=…, on stdout) gives the messages received.
type postfixSink struct {
	cmd   *exec.Cmd
	addr  string
	count atomic.Int64
	done  chan struct{}
}

var mesgCounter = regexp.MustCompile(`mesg=(\d+)`)

func startPostfixSink() (*postfixSink, error) {
	path, err := findSMTPSink()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"-c"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "nobody") // smtp-sink refuses to run as root
	}
	args = append(args, addr, "1024")
	s := &postfixSink{cmd: exec.Command(path, args...), addr: addr, done: make(chan struct{})}
	s.cmd.SysProcAttr = childAttr()
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	s.cmd.Stderr = &limitedWriter{w: &stderr, n: 16 << 10}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start smtp-sink: %w", err)
	}
	go func() {
		defer close(s.done)
		buf := make([]byte, 4096)
		var line []byte
		for {
			n, err := out.Read(buf)
			for _, c := range buf[:n] {
				if c == '\r' || c == '\n' {
					if m := mesgCounter.FindSubmatch(line); m != nil {
						if v, err := strconv.ParseInt(string(m[1]), 10, 64); err == nil {
							s.count.Store(v)
						}
					}
					line = line[:0]
					continue
				}
				line = append(line, c)
			}
			if err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			s.Close()
			return nil, fmt.Errorf("smtp-sink does not listen on %s: %w %s", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *postfixSink) URL() string     { return "smtp://" + s.addr + "?tls=none" }
func (s *postfixSink) Addr() string    { return s.addr }
func (s *postfixSink) Messages() int64 { return s.count.Load() }
func (s *postfixSink) measured() *measured {
	return measurePID("sink", "sink", s.cmd.Process.Pid)
}
func (s *postfixSink) Close() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// smtpSourceCmd is Postfix's smtp-source sending n messages of size bytes
// to addr over sessions sessions, reusing each (-d), as jetmail's pool
// does.
func smtpSourceCmd(path, addr string, n, sessions, size int) *exec.Cmd {
	cmd := exec.Command(path, "-d", "-s", strconv.Itoa(sessions), "-m", strconv.Itoa(n), "-l", strconv.Itoa(size),
		"-M", "bench.invalid", "-f", "bench@example.com", "-t", "rcpt@example.net", addr)
	cmd.SysProcAttr = childAttr()
	cmd.Env = childEnv()
	return cmd
}

// runSMTPSource runs cmd until it exits, or kills it when ctx ends.
func runSMTPSource(ctx context.Context, cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout = &limitedWriter{w: &out, n: 16 << 10}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start smtp-source: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("smtp-source: %w: %s", err, strings.TrimSpace(out.String()))
		}
		return nil
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return ctx.Err()
	}
}

// smtpSessions is the number of SMTP sessions jetmail uses: --pool-size
// per worker.
func (b *bencher) smtpSessions() int { return b.f.Workers * b.f.PoolSize }

// smtpSource measures Postfix's smtp-source sending n messages of msg's
// size into sink, over as many sessions as jetmail uses.
func (b *bencher) smtpSource(ctx context.Context, sink benchSink, msg *benchMessage, n int) (*phaseStats, error) {
	path, err := findPostfixTool("smtp-source")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.f.Timeout)
	defer cancel()
	base := sink.Messages()
	cmd := smtpSourceCmd(path, sink.Addr(), n, b.smtpSessions(), msg.wireBytes)
	m := startMeter(sinkMeasured(sink), measureExited("smtp-source", "smtp-source", cmd))
	if err := runSMTPSource(ctx, cmd); err != nil {
		return nil, err
	}
	st := m.stats(n, time.Now())
	st.SinkCount = awaitSinkCount(sink, base+int64(n)) - base
	b.check("smtp-source", n, st.SinkCount, nil)
	return &st, nil
}

// ---- a throwaway Postfix relay ----

// errSkip marks a measurement that cannot run here; its text says why.
var errSkip = errors.New("skipped")

// postfixRelay is a Postfix instance of its own (config, queue and data
// folders in a temporary folder, a free loopback port) that relays every
// message to the sink. It is started with `postfix -c DIR start`; master
// makes itself a session leader, so the instance is the processes of
// that session.
type postfixRelay struct {
	dir, addr, postfix string
	master             int // pid of master, and the id of its session
	watchdog           *exec.Cmd
	watchdogIn         io.WriteCloser
}

// relayMainCf is the main.cf of the relay: every message, to any domain,
// relayed to the sink; nothing local, no DNS, no TLS; the log in a file
// of its own (Postfix reports errors only there).
const relayMainCf = `compatibility_level = %[1]s
queue_directory = %[2]s/queue
data_directory = %[2]s/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.invalid
mydomain = bench.invalid
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [%[3]s]:%[4]s
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
biff = no
maillog_file_prefixes = %[2]s/log
maillog_file = %[2]s/log/maillog
`

// relayMasterCf is the master.cf of the relay: the services a relay needs,
// none chrooted, with its own SMTP port and the postlog service that
// maillog_file needs.
const relayMasterCf = `%[1]s inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
showq     unix n - n - - showq
postlog   unix-dgram n - n - 1 postlogd
`

// relayWatchdog stops the relay if the bench dies without doing so: it
// waits for the end of its standard input (a pipe from the bench, which
// ends when the bench does, however it ends), then aborts a master that is
// still running, kills its process group, and removes the folder.
const relayWatchdog = `read -r _
f="$1/queue/pid/master.pid"
if [ -s "$f" ]; then
  pid=$(tr -dc 0-9 < "$f")
  if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = master ]; then
    "$2" -c "$1" abort >/dev/null 2>&1
    sleep 2
    kill -KILL -- "-$pid" 2>/dev/null
  fi
fi
rm -rf "$1"
`

// compatibilityLevel is the newest compatibility_level this Postfix
// understands of those the relay's main.cf was written for.
func compatibilityLevel(postconf string) string {
	out, err := exec.Command(postconf, "-h", "-d", "mail_version").Output()
	if err != nil {
		return "2"
	}
	var major, minor int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "%d.%d", &major, &minor); err != nil {
		return "2"
	}
	if major > 3 || major == 3 && minor >= 6 {
		return "3.6"
	}
	return "2"
}

// startPostfixRelay starts a relay to sinkAddr. It fails with errSkip when
// it cannot run here (no Postfix, not root, no postfix user).
func startPostfixRelay(ctx context.Context, sinkAddr string) (*postfixRelay, error) {
	postfix, err := findPostfixTool("postfix")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errSkip, err)
	}
	postconf, err := findPostfixTool("postconf")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errSkip, err)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: a Postfix instance is started by root (postfix start), and the bench does not run as root", errSkip)
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("%w: no postfix user: %w", errSkip, err)
	}
	if _, err := user.LookupGroup("postdrop"); err != nil {
		return nil, fmt.Errorf("%w: no postdrop group: %w", errSkip, err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	gid, _ := strconv.Atoi(owner.Gid)
	sinkHost, sinkPort, err := net.SplitHostPort(sinkAddr)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "jetmail-bench-postfix-")
	if err != nil {
		return nil, err
	}
	r := &postfixRelay{dir: dir, postfix: postfix}
	ok := false
	defer func() {
		if !ok {
			r.stop()
		}
	}()
	// Postfix's daemons run as postfix and read the folder by name.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{"queue", "data", "log"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, gid); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r.addr = "127.0.0.1:" + strconv.Itoa(port)
	mainCf := fmt.Sprintf(relayMainCf, compatibilityLevel(postconf), dir, sinkHost, sinkPort)
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte(mainCf), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "master.cf"), []byte(fmt.Sprintf(relayMasterCf, r.addr)), 0o644); err != nil {
		return nil, err
	}

	// The watchdog first, so that a bench killed while Postfix starts
	// leaves nothing behind either.
	r.watchdog = exec.Command("/bin/sh", "-c", relayWatchdog, "relay-watchdog", dir, postfix)
	r.watchdog.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not Pdeathsig: it must outlive the bench
	if r.watchdogIn, err = r.watchdog.StdinPipe(); err != nil {
		return nil, err
	}
	if err := r.watchdog.Start(); err != nil {
		return nil, fmt.Errorf("start the relay's watchdog: %w", err)
	}

	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := exec.CommandContext(sctx, postfix, "-c", dir, "start")
	start.Env = childEnv()
	if out, err := start.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("postfix -c %s start: %w: %s%s", dir, err, out, r.maillogTail())
	}
	data, err := os.ReadFile(filepath.Join(dir, "queue", "pid", "master.pid"))
	if err != nil {
		return nil, fmt.Errorf("the relay's master.pid: %w%s", err, r.maillogTail())
	}
	if r.master, err = strconv.Atoi(strings.TrimSpace(string(data))); err != nil {
		return nil, fmt.Errorf("the relay's master.pid %q: %w", data, err)
	}
	if st, err := procStat(r.master); err != nil || len(st) < 4 || st[3] != strconv.Itoa(r.master) {
		return nil, fmt.Errorf("the relay's master (pid %d) is not running as a session leader%s", r.master, r.maillogTail())
	}
	for deadline := time.Now().Add(10 * time.Second); portFree(r.addr); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the relay does not listen on %s%s", r.addr, r.maillogTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	ok = true
	return r, nil
}

// maillogTail is the end of the relay's log, for error messages.
func (r *postfixRelay) maillogTail() string {
	data, err := os.ReadFile(filepath.Join(r.dir, "log", "maillog"))
	if err != nil || len(data) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return "\nthe end of its maillog:\n" + strings.Join(lines[max(0, len(lines)-15):], "\n")
}

// measured measures the relay: every process of its session, with what
// master reaped from those that ended.
func (r *postfixRelay) measured() *measured {
	sid := r.master
	return &measured{name: "postfix", role: "postfix", cpu: func() cpuReading { return sessionCPU(sid) },
		resetPeak: func() {}, peak: func() float64 { return 0 }}
}

// stop stops the relay whatever state it is in: `postfix stop`, then
// SIGKILL to any of its processes still alive after 10 s, then the
// watchdog (which removes the folder), then the folder.
func (r *postfixRelay) stop() {
	if r.master > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		stop := exec.CommandContext(ctx, r.postfix, "-c", r.dir, "stop")
		stop.Env = childEnv()
		_ = stop.Run()
		cancel()
		deadline := time.Now().Add(10 * time.Second)
		for len(sessionAlive(r.master)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		for _, pid := range sessionAlive(r.master) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		r.master = 0
	}
	if r.watchdog != nil && r.watchdog.Process != nil {
		r.watchdogIn.Close()
		done := make(chan struct{})
		go func() { _ = r.watchdog.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = r.watchdog.Process.Kill()
			<-done
		}
		r.watchdog = nil
	}
	os.RemoveAll(r.dir)
}

// relay measures a Postfix relay: n messages of msg's size sent into it
// by smtp-source over as many sessions as jetmail uses, until the sink
// has them all. It returns nil (and a note) when the relay cannot run
// here.
func (b *bencher) relay(ctx context.Context, sink benchSink, msg *benchMessage, n int) (*phaseStats, error) {
	src, err := findPostfixTool("smtp-source")
	if err != nil {
		return nil, err
	}
	r, err := startPostfixRelay(ctx, sink.Addr())
	if errors.Is(err, errSkip) {
		if !b.relaySkipped {
			b.relaySkipped = true
			b.note("no Postfix relay figures: %v", err)
		}
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer r.stop()
	ctx, cancel := context.WithTimeout(ctx, b.f.Timeout)
	defer cancel()
	base := sink.Messages()
	cmd := smtpSourceCmd(src, r.addr, n, b.smtpSessions(), msg.wireBytes)
	m := startMeter(r.measured(), sinkMeasured(sink), measureExited("smtp-source", "smtp-source", cmd))
	if err := runSMTPSource(ctx, cmd); err != nil {
		return nil, fmt.Errorf("%w%s", err, r.maillogTail())
	}
	// The relay has accepted (and fsynced) every message; wait until it
	// has delivered them, or until it has made no progress for 30 s.
	last, lastAt := int64(-1), time.Now()
	for {
		got := sink.Messages() - base
		if got >= int64(n) {
			break
		}
		if got != last {
			last, lastAt = got, time.Now()
		}
		if time.Since(lastAt) > 30*time.Second || ctx.Err() != nil {
			return nil, fmt.Errorf("the Postfix relay delivered %d of %d messages and then nothing for 30 s%s", got, n, r.maillogTail())
		}
		time.Sleep(5 * time.Millisecond)
	}
	st := m.stats(n, time.Now())
	st.SinkCount = awaitSinkCount(sink, base+int64(n)) - base
	b.check("Postfix relay", n, st.SinkCount, nil)
	return &st, nil
}
