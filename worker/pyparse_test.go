package worker

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/jetmail/jetmail/schema"
)

// pyReader reads messages with Python's email package and the modern
// policy (policy.default), a parser written independently of Go's, and
// prints what it decoded as one JSON object per message. It also reports
// whether this Python has CPython issue 128110: a space between two
// adjacent encoded words of a display name that is not dropped (fixed in
// 3.14).
const pyReader = `
import email, email.policy, json, sys

def probe():
    m = email.message_from_bytes(b"From: =?UTF-8?Q?a?= =?UTF-8?Q?b?= <x@example.com>\r\n\r\n", policy=email.policy.default)
    return m["From"].addresses[0].display_name != "ab"

out = {"EWSpaceBug": probe(), "Messages": []}
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        m = email.message_from_bytes(f.read(), policy=email.policy.default)
    r = {"Subject": str(m["Subject"]), "Addresses": {}, "Headers": {}, "Files": [], "Defects": [repr(d) for d in m.defects]}
    for k in ("From", "To", "Cc", "Reply-To"):
        if m[k] is not None:
            r["Addresses"][k] = [[a.display_name, a.addr_spec] for a in m[k].addresses]
            r["Defects"] += [k + ": " + repr(d) for d in m[k].defects]
    for k in m.keys():
        r["Headers"][k] = str(m[k])
        r["Defects"] += [k + ": " + repr(d) for d in m[k].defects]
    for part in m.walk():
        cd = part["Content-Disposition"]
        if cd is None:
            continue
        ct = part["Content-Type"]
        r["Defects"] += [repr(d) for d in cd.defects] + [repr(d) for d in ct.defects]
        r["Files"].append([part.get_filename(), ct.params.get("name"), cd.params.get("filename"), str(part["Content-ID"] or "")])
    out["Messages"].append(r)
json.dump(out, sys.stdout)
`

// pyMessage is what pyReader decoded from one message.
type pyMessage struct {
	Subject   string
	Addresses map[string][][2]string
	Headers   map[string]string
	Files     [][4]string // get_filename(), Content-Type name, Content-Disposition filename, Content-ID
	Defects   []string
}

// readWithPython decodes the messages with pyReader. It fails the test
// when python3 is missing: the check is the point of the test.
func readWithPython(t *testing.T, raws [][]byte) (msgs []pyMessage, ewSpaceBug bool) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed to read the messages with an independent parser: %v", err)
	}
	dir := t.TempDir()
	args := []string{"-c", pyReader}
	for i, raw := range raws {
		p := filepath.Join(dir, fmt.Sprintf("%d.eml", i))
		if err := os.WriteFile(p, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	cmd := exec.Command(py, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.String())
	}
	var res struct {
		EWSpaceBug bool
		Messages   []pyMessage
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python3 output: %v\n%s", err, out)
	}
	if len(res.Messages) != len(raws) {
		t.Fatalf("python3 read %d messages, want %d", len(res.Messages), len(raws))
	}
	return res.Messages, res.EWSpaceBug
}

var adjacentWords = regexp.MustCompile(`\?=\s+=\?`)

// pyNormalises reports whether Python's email package changes the white
// space of the display name as Build encodes it (see
// TestBuildHeadersReadBackInPython).
func pyNormalises(name string, ewSpaceBug bool) bool {
	if quotable(name) {
		return false
	}
	h := newHeaderValue("To")
	h.addPhrase(name)
	return strings.Contains(name, "  ") || strings.Contains(name, "\t") ||
		ewSpaceBug && adjacentWords.MatchString(h.String())
}

// TestBuildHeadersReadBackInPython checks that Python's email package reads
// every header Build writes from a request exactly as the request gave it:
// the subject, the display names and addresses of From, To, Cc and
// Reply-To, the extra headers and the file names (get_filename(), and the
// name and filename parameters themselves), without a defect.
//
// Three limits of that reader are allowed for, and only those:
// get_filename() strips white space from either end of a file name; it
// reduces runs of white space (and tabs) inside an encoded display name to
// one space; and, before Python 3.14 (CPython issue 128110), it keeps the
// space between two adjacent encoded words of a display name, which only
// names with a long run of non-ASCII words need. Names that meet either of
// the last two are compared with their white space normalised (the rich
// message has none); the Go reader (TestBuildHeadersReadBack) still sees
// them exactly.
func TestBuildHeadersReadBackInPython(t *testing.T) {
	t.Parallel()
	long := &schema.Request{
		Id: "long-names", From: `"Zażółć gęślą jaźń źdźbło żółć ćma łania ośla ćwierć żurawia" <z@example.pl>`,
		To:      schema.AddressList{`"Bérénice-Amélie Rosemonde Dûbois-Bénard Zażółć Gęślą Jaźń" <rose@example.com>`},
		Subject: "s", Body: "b",
	}
	reqs := append([]*schema.Request{richRequest(), long}, trickyRequests()...)
	var raws [][]byte
	for _, req := range reqs {
		_, raw := render(t, req, BuildOptions{})
		raws = append(raws, raw)
	}
	msgs, ewSpaceBug := readWithPython(t, raws)
	for i, req := range reqs {
		want := wantHeaders(t, req, "")
		got := msgs[i]
		if len(got.Defects) > 0 {
			t.Errorf("%s: Python found defects: %q", req.Id, got.Defects)
		}
		if got.Subject != want.Subject {
			t.Errorf("%s: Subject = %q, want %q", req.Id, got.Subject, want.Subject)
		}
		for field, addrs := range got.Addresses {
			for j := range addrs {
				if j >= len(want.Addresses[field]) {
					break
				}
				name := want.Addresses[field][j][0]
				if pyNormalises(name, ewSpaceBug) {
					if req.Id == richRequest().Id {
						t.Errorf("%s: display name %q of the rich message needs white space normalised", req.Id, name)
					}
					t.Logf("%s: %s display name %q compared with white space normalised", req.Id, field, name)
					addrs[j][0] = strings.Join(strings.Fields(addrs[j][0]), " ")
					want.Addresses[field][j][0] = strings.Join(strings.Fields(name), " ")
				}
			}
		}
		if diff := cmp.Diff(want.Addresses, got.Addresses); diff != "" {
			t.Errorf("%s: addresses (-want +got):\n%s", req.Id, diff)
		}
		for k, v := range want.Headers {
			if got.Headers[k] != v {
				t.Errorf("%s: %s = %q, want %q", req.Id, k, got.Headers[k], v)
			}
		}
		var wantFiles [][4]string
		for _, a := range req.Attachments {
			cid := ""
			if a.ContentId != "" {
				cid = "<" + a.ContentId + ">"
			}
			// get_filename() strips white space from either end of any
			// name; the parameters themselves keep it.
			wantFiles = append(wantFiles, [4]string{strings.TrimSpace(a.FileName), a.FileName, a.FileName, cid})
		}
		if diff := cmp.Diff(wantFiles, got.Files, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: file names (-want +got):\n%s", req.Id, diff)
		}
	}
}
