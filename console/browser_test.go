package console

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// The browser tests drive Debian's Chromium, headless, with chromedp: one
// browser for the package (started by the first test that needs it, ended
// by TestMain), one tab per test, each in a browser context of its own. They skip, saying so, where
// /usr/bin/chromium is missing; CI installs it (.ci/run).

// chromiumPath is where Debian's chromium package puts the browser.
const chromiumPath = "/usr/bin/chromium"

var browser struct {
	once   sync.Once
	ctx    context.Context
	err    error
	cancel func()
}

func TestMain(m *testing.M) {
	code := m.Run()
	if browser.cancel != nil {
		browser.cancel()
	}
	os.Exit(code)
}

// newTab opens a tab of the shared browser, closed when the test ends,
// with a viewport of a laptop screen.
func newTab(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("browser test skipped: no %s (install Debian's chromium package: apt-get install chromium)", chromiumPath)
	}
	browser.once.Do(func() {
		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(chromiumPath),
			chromedp.NoSandbox, // CI runs as root
			chromedp.DisableGPU,
			chromedp.Flag("disable-dev-shm-usage", true),
			chromedp.Flag("lang", "en-US"),
			chromedp.WindowSize(1440, 900),
		)
		actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
		bctx, bcancel := chromedp.NewContext(actx)
		browser.ctx, browser.cancel = bctx, func() { bcancel(); acancel() }
		browser.err = chromedp.Do(bctx) // starts the browser, with no timeout
	})
	if browser.err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, browser.err)
	}
	// A browser context of its own, so that the tests' cookies (all for
	// 127.0.0.1, whatever the port) do not mix.
	tab, cancel := chromedp.NewContext(browser.ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	// The first action opens the tab, which lives as long as the context
	// of that call: so without a timeout.
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	do(t, tab, chromedp.EmulateViewport(1440, 900))
	return tab
}

// actionTimeout bounds one step of a browser test.
const actionTimeout = 20 * time.Second

// do runs actions in the tab, failing the test on an error.
func do(t *testing.T, tab context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, actionTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// run runs one action that returns a value.
func run[T any](t *testing.T, tab context.Context, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, actionTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// text is the text of the first element sel selects, once it is visible.
// A look that fails is tried again for a while: the live parts of a page
// replace their elements every few seconds, which can make a node that a
// query found disappear before its text is read.
func text(t *testing.T, tab context.Context, sel string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := textNow(tab, sel)
		if err == nil {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("browser: text of %s: %v", sel, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// textNow is the text of the element sel selects, or an error: for polls,
// which may look while a live part is being replaced.
func textNow(tab context.Context, sel string) (string, error) {
	ctx, cancel := context.WithTimeout(tab, 2*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel), chromedp.NodeVisible))
}

// waitText waits until the text of the element sel selects contains want,
// as the live parts of a page change it.
func waitText(t *testing.T, tab context.Context, sel, want string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := textNow(tab, sel)
		if err == nil && strings.Contains(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s shows %q (error %v), want it to contain %q", sel, got, err, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitFor polls cond until it is true, for what a live page shows after a
// while; it fails the test after 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 15s: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot saves a full-page PNG of the tab under the test's temporary
// folder, logs its path, and returns it. With JETMAIL_CONSOLE_SHOTS set to
// a folder, it is also written there (how docs/console.png is made).
func screenshot(t *testing.T, tab context.Context, name string) string {
	t.Helper()
	png := run(t, tab, chromedp.FullScreenshot(100))
	path := filepath.Join(t.TempDir(), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	if dir := os.Getenv("JETMAIL_CONSOLE_SHOTS"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// dialogs records every JavaScript dialog (alert, confirm, prompt) the
// tab opens, and dismisses it so that the page goes on.
func dialogs(t *testing.T, tab context.Context) func() []string {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	events := chromedp.Events(tab, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range events {
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, fmt.Sprintf("%s: %s", ev.Type, ev.Message))
			mu.Unlock()
			_, _ = chromedp.Call(tab, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}
